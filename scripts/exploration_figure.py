"""The figure of docs/exploration.md: policy entropy, held-out pass@1 and pass@k against the step, one
line per run (a run directory each, labelled by its preset), from the runs' metrics.jsonl alone.

    python scripts/exploration_figure.py runs/compare-explore-*/runs/* --out docs/img/exploration/explore.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anypo.runs import read_jsonl
from anypo.stats import trailing_mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/img/exploration/explore.png"))
    ap.add_argument("--smooth", type=int, default=3, help="moving mean over this many steps for the entropy")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # (preset, metrics rows) of each run, GRPO first
    runs = [(json.loads((r / "config.json").read_text())["preset"], read_jsonl(r / "metrics.jsonl")) for r in args.runs]
    runs.sort(key=lambda pr: pr[0] != "grpo")
    k = max(int(key.split("@")[1]) for _, rows in runs for row in rows for key in row if key.startswith("eval/pass@"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, (label, rows) in enumerate(runs):
        style = {"color": f"C{i % 10}", "lw": 2.2 if label == "grpo" else 1.4, "ls": "-" if label == "grpo" else "--"}
        ent = [(r["step"], r["policy/entropy"]) for r in rows if "policy/entropy" in r]
        axes[0].plot([s for s, _ in ent], trailing_mean([v for _, v in ent], args.smooth), label=label, **style)
        for ax, key in ((axes[1], "eval/pass@1"), (axes[2], f"eval/pass@{k}")):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", ms=4, label=label, **style)
    axes[0].set_ylabel(f"policy entropy (nats, {args.smooth}-step moving mean)")
    axes[1].set_ylabel("held-out pass@1")
    axes[2].set_ylabel(f"held-out pass@{k}")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
