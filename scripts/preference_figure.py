"""The preference figure of docs/preference.md from finished runs of the online preference loop.

Reads run directories (or compare directories: every run under ``runs/``), groups them by preset,
and plots the held-out evaluation curves the online preference loop logs, mean over seeds with the
min-max band: ``eval/exploitability`` (distance to the exact Nash of the oracle's game; the
intransitive-oracle panel), ``eval/win_rate_vs_init``, ``eval/gold`` and ``eval/kl_ref``. The x axis
is the step, or the training tokens generated (``--x tokens``: methods compared at equal samples).
It trains nothing and never imports torch. For example::

    anypo compare online_dpo sppo inpo apo --seeds 0 1 2 --steps 30 --oracle.kind intransitive \\
        --eval-every 5 --name intransitive
    anypo compare online_dpo xpo sppo apo iterative_dpo --seeds 0 1 2 --steps 30 --eval-every 5 --name verifier_bt
    python scripts/preference_figure.py runs/compare-intransitive-* --out docs/preference_intransitive.png
    python scripts/preference_figure.py runs/compare-verifier_bt-* --x tokens --out docs/preference_bt.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS = {
    "eval/exploitability": "exploitability (max_y P(y > pi) - 1/2)",
    "eval/win_rate_vs_init": "win rate vs the initial policy",
    "eval/gold": "gold reward (oracle)",
    "eval/kl_ref": "KL(pi || pi_1) estimate",
}


def run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories among ``paths``: a path with metrics.jsonl, or every run under a compare's runs/."""
    out = []
    for p in paths:
        if (p / "metrics.jsonl").exists():
            out.append(p)
        elif (p / "runs").is_dir():
            out += sorted(d for d in (p / "runs").iterdir() if (d / "metrics.jsonl").exists())
        else:
            raise SystemExit(f"{p}: neither a run directory (metrics.jsonl) nor a compare directory (runs/)")
    return out


def load(run: Path) -> tuple[str, list[dict]]:
    """(preset or run name, metric rows merged per step)."""
    cfg = json.loads((run / "config.json").read_text())
    rows: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows.setdefault(int(r["step"]), {}).update(r)
    return cfg.get("preset") or cfg.get("name") or run.name, [rows[k] for k in sorted(rows)]


def curves(
    runs: list[Path], key: str, x: str = "step"
) -> dict[str, tuple[list[float], list[float], list[float], list[float]]]:
    """Per preset: x values, mean, min and max of ``key`` over the runs (seeds) at the x values all
    runs of the preset logged it (tokens: the training tokens generated up to that step)."""
    by: dict[str, list[dict[float, float]]] = {}
    for run in runs:
        name, rows = load(run)
        tokens, series = 0.0, {}
        for r in rows:
            tokens = float(r.get("rollout/generated_tokens_total", tokens))
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                series[float(r["step"]) if x == "step" else tokens] = float(v)
        if series:
            by.setdefault(name, []).append(series)
    out = {}
    for name, seeds in by.items():
        xs = sorted(set.intersection(*(set(s) for s in seeds)))
        vals = [[s[v] for s in seeds] for v in xs]
        out[name] = (xs, [sum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="run or compare directories")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    ap.add_argument("--x", choices=("step", "tokens"), default="step", help="x axis: step or tokens generated")
    ap.add_argument("--metrics", nargs="+", default=list(METRICS), help="eval keys to plot, one panel each")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = run_dirs(args.paths)
    panels = [(k, curves(runs, k, args.x)) for k in args.metrics]
    panels = [(k, c) for k, c in panels if c]
    if not panels:
        raise SystemExit("none of the runs logged " + ", ".join(args.metrics) + " (evaluate with --eval-every)")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, cs) in zip(axes[0], panels, strict=True):
        for name, (xs, mean, lo, hi) in sorted(cs.items()):
            (line,) = ax.plot(xs, mean, marker="o", ms=3, label=name)
            if any(a != b for a, b in zip(lo, hi, strict=True)):
                ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        ax.set_title(METRICS.get(key, key), fontsize=9)
        ax.set_xlabel("step" if args.x == "step" else "training tokens generated")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
