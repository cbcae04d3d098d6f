"""The preference figure of docs/preference.md from finished runs of the online preference loop.

Reads run directories (or compare directories: every run under ``runs/``), groups them by preset,
and plots the held-out evaluation curves the online preference loop logs, mean over seeds with the
min-max band: ``eval/exploitability`` (distance to the exact Nash of the oracle's game; the
intransitive-oracle panel), ``eval/win_rate_vs_init``, ``eval/gold`` and ``eval/kl_ref``. The x axis
is the step, or the training tokens generated (``--x tokens``: methods compared at equal samples; an
offline run on pairs from ``anypo pairs`` counts the sampling cost of the pairs it has trained on).
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
    "eval/proxy": "proxy reward (the reward model)",
    "eval/response_tokens": "response length (tokens)",
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


def load(run: Path, label: str = "preset") -> tuple[str, list[dict]]:
    """(preset or run name, metric rows merged per step); ``label="name"``: the run's name always (two
    runs of one preset with different overrides)."""
    cfg = json.loads((run / "config.json").read_text())
    if label == "name":
        return cfg.get("name") or run.name, _rows(run)
    return cfg.get("preset") or cfg.get("name") or run.name, _rows(run)


def offline_run(run: Path) -> bool:
    """True for a run of the offline preference loop (fixed pairs; dashed in the figure)."""
    return json.loads((run / "config.json").read_text()).get("_type") == "PrefTrainConfig"


def _rows(run: Path) -> list[dict]:
    rows: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows.setdefault(int(r["step"]), {}).update(r)
    return [rows[k] for k in sorted(rows)]


def curves(
    runs: list[Path], key: str, x: str = "step", label: str = "preset"
) -> dict[str, tuple[list[float], list[float], list[float], list[float]]]:
    """Per preset: x values, mean, min and max of ``key`` over the runs (seeds) at the steps all runs of
    the preset logged it; with ``x="tokens"`` the x value of a step is the seeds' mean of the training
    tokens generated up to it (seeds sample different lengths, so their token counts differ), with
    ``x="kl"`` their mean ``eval/kl_ref`` at that step (over-optimisation plots)."""
    by: dict[str, list[dict[int, tuple[float, float]]]] = {}
    for run in runs:
        name, rows = load(run, label)
        tokens, series = 0.0, {}
        for r in rows:
            if "rollout/generated_tokens_total" in r:
                tokens = float(r["rollout/generated_tokens_total"])
            else:  # an offline run on `anypo pairs` data logs its pairs' sampling cost per step only
                tokens += float(r.get("rollout/generated_tokens", 0.0))
            v, at = r.get(key), tokens if x != "kl" else r.get("eval/kl_ref")
            if isinstance(v, (int, float)) and math.isfinite(v) and isinstance(at, (int, float)):
                series[int(r["step"])] = (float(at), float(v))
        if series:
            by.setdefault(name, []).append(series)
    out = {}
    for name, seeds in by.items():
        steps = sorted(set.intersection(*(set(s) for s in seeds)))
        vals = [[s[k][1] for s in seeds] for k in steps]
        xs = [float(k) if x == "step" else sum(s[k][0] for s in seeds) / len(seeds) for k in steps]
        out[name] = (xs, [sum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals])
    return out


def table(runs: list[Path], keys: list[str], label: str = "preset") -> str:
    """A markdown table: per preset, the seeds and, per key, the mean over seeds at step 0 and at the last
    step all seeds logged it, with the min-max over seeds; and the mean training tokens generated."""
    head = ["preset", "seeds"] + [f"{k} (step 0 -> last)" for k in keys] + ["tokens generated"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    per = {k: curves(runs, k, "tokens", label) for k in keys}
    names = sorted({load(r, label)[0] for r in runs})
    counts = {n: sum(load(r, label)[0] == n for r in runs) for n in names}
    for n in names:
        cells, tok = [n, str(counts[n])], ""
        for k in keys:
            if n not in per[k]:
                cells.append("")
                continue
            xs, mean, lo, hi = per[k][n]
            cells.append(f"{mean[0]:.3f} -> **{mean[-1]:.3f}** ({lo[-1]:.3f}-{hi[-1]:.3f})")
            tok = f"{xs[-1]:,.0f}"
        lines.append("| " + " | ".join(cells + [tok]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="run or compare directories")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    ap.add_argument(
        "--x", choices=("step", "tokens", "kl"), default="step", help="x axis: step, tokens generated or eval/kl_ref"
    )
    ap.add_argument("--label", choices=("preset", "name"), default="preset", help="group runs by preset or run name")
    ap.add_argument("--metrics", nargs="+", default=list(METRICS), help="eval keys to plot, one panel each")
    ap.add_argument("--table", action="store_true", help="also print a markdown table of the metrics per preset")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = run_dirs(args.paths)
    if args.table:
        print(table(runs, args.metrics, args.label))
    panels = [(k, curves(runs, k, args.x, args.label)) for k in args.metrics]
    panels = [(k, c) for k, c in panels if c]
    if not panels:
        raise SystemExit("none of the runs logged " + ", ".join(args.metrics) + " (evaluate with --eval-every)")
    offline = {load(r, args.label)[0] for r in runs if offline_run(r)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, cs) in zip(axes[0], panels, strict=True):
        for name, (xs, mean, lo, hi) in sorted(cs.items()):
            style = {"ls": "--", "marker": "s"} if name in offline else {"ls": "-", "marker": "o"}
            (line,) = ax.plot(xs, mean, ms=3, label=name + (" (offline)" if name in offline else ""), **style)
            if any(a != b for a, b in zip(lo, hi, strict=True)):
                ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        ax.set_title(METRICS.get(key, key), fontsize=9)
        ax.set_xlabel({"step": "step", "tokens": "training tokens generated", "kl": "KL(pi || pi_1) estimate"}[args.x])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
