"""The figure of docs/exploration.md: policy entropy, held-out pass@1 and pass@k against the step, one
line per run (a run directory each, labelled by its preset), from the runs' metrics.jsonl alone.

    python scripts/exploration_figure.py runs/compare-explore-*/runs/* --out docs/img/exploration/explore.png

``--table`` also prints the page's table of the runs (entropy over the first and last 5 steps,
held-out pass@1 and pass@k at each evaluation, reward and response length over the last 5 steps,
training minutes as the sum of the step times).
"""

from __future__ import annotations

import json

from _figure import pyplot, run_args, save

from anypo.runs import read_jsonl
from anypo.stats import trailing_mean


def main() -> None:
    args = run_args(
        __doc__,
        "docs/img/exploration/explore.png",
        3,
        "moving mean over this many steps for the entropy",
        lambda ap: ap.add_argument("--table", action="store_true", help="also print the markdown table of the runs"),
    )
    plt = pyplot()
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
    save(fig, args.out)
    if args.table:
        print(table(runs, k))


def table(runs: list[tuple[str, list[dict]]], k: int) -> str:
    """The markdown table of docs/exploration.md's Result, one row per run."""

    def mean(rows: list[dict], key: str) -> float:
        vals = [r[key] for r in rows if key in r]
        return sum(vals) / len(vals) if vals else float("nan")

    out = [
        f"| method | entropy, first 5 steps | entropy, last 5 steps | held-out pass@1 | held-out pass@{k} "
        "| reward, last 5 | response length, last 5 | training min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, rows in runs:
        train = [r for r in rows if "policy/entropy" in r]
        first, last = train[:5], train[-5:]
        evals = [r for r in rows if "eval/pass@1" in r]
        p1 = " / ".join(f"{r['eval/pass@1']:.2f}" for r in evals)
        pk = " / ".join(f"{r[f'eval/pass@{k}']:.2f}" for r in evals)
        minutes = sum(r.get("time/step_s", 0.0) for r in train) / 60
        out.append(
            f"| `{label}` | {mean(first, 'policy/entropy'):.2f} | {mean(last, 'policy/entropy'):.2f} | {p1} | {pk} "
            f"| {mean(last, 'reward/mean'):.3f} | {mean(last, 'response/length_mean'):.1f} | {minutes:.1f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
