"""The figure of docs/curricula.md, from the runs' metrics.jsonl alone (a run directory each, labelled by
its preset): against the generated tokens, the share of groups whose samples disagree on correctness
(the groups a curriculum wants: their advantage carries a correctness signal); the held-out pass@1 of
each difficulty level at the end of the run; the total tokens each run generated, with its steps.

    python scripts/curricula_figure.py runs/compare-curricula-*/runs/* --out docs/img/curricula/curricula.png

Prints one markdown table row per run (the numbers docs/curricula.md quotes).
"""

from __future__ import annotations

import json

from _figure import pyplot, run_args, save

from anypo.runs import read_jsonl
from anypo.stats import trailing_mean


def summary(rows: list[dict]) -> dict:
    """What the table quotes: steps, tokens, the mean share of mixed-correctness groups over the run and
    its second half, and the last evaluation's pass@1 overall and by level."""
    train = [r for r in rows if "rollout/generated_tokens_total" in r]
    mixed = [r["rollout/mixed_correct_group_frac"] for r in train if "rollout/mixed_correct_group_frac" in r]
    half = mixed[len(mixed) // 2 :]
    evals = [r for r in rows if "eval/pass@1" in r]
    last = evals[-1] if evals else {}
    levels = sorted(int(k.rsplit("_", 1)[1]) for k in last if k.startswith("eval/pass@1/level_"))
    return {
        "steps": max((r["step"] for r in train), default=0),
        "tokens": train[-1]["rollout/generated_tokens_total"] if train else 0.0,
        "mixed": sum(mixed) / len(mixed) if mixed else float("nan"),
        "mixed_2nd_half": sum(half) / len(half) if half else float("nan"),
        "pass1": last.get("eval/pass@1", float("nan")),
        "levels": {lv: last[f"eval/pass@1/level_{lv}"] for lv in levels},
    }


def main() -> None:
    args = run_args(__doc__, "docs/img/curricula/curricula.png", 4, "moving mean over this many steps")
    plt = pyplot()

    runs = [(json.loads((r / "config.json").read_text())["preset"], read_jsonl(r / "metrics.jsonl")) for r in args.runs]
    runs.sort(key=lambda pr: (pr[0] != "grpo", pr[0]))
    stats = [(label, summary(rows)) for label, rows in runs]
    levels = sorted({lv for _, s in stats for lv in s["levels"]})

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.3, 1.3, 1]})
    for i, (label, rows) in enumerate(runs):
        style = {
            "color": "black" if label == "grpo" else f"C{i % 10}",
            "lw": 2.4 if label == "grpo" else 1.2,
            "ls": "-" if i < 10 else "--",  # past 10 colours the next style: no two runs look alike
        }
        pts = [
            (r["rollout/generated_tokens_total"], r["rollout/mixed_correct_group_frac"])
            for r in rows
            if "rollout/mixed_correct_group_frac" in r
        ]
        if pts:
            axes[0].plot([t for t, _ in pts], trailing_mean([v for _, v in pts], args.smooth), label=label, **style)
    axes[0].set_xlabel("generated tokens (every draw, re-scoring and hinted pass counts)")
    axes[0].set_ylabel(f"groups with right and wrong samples ({args.smooth}-step mean)")
    axes[0].legend(fontsize=7, ncol=2)

    width = 0.8 / max(1, len(levels))
    names = [label for label, _ in stats]
    for j, lv in enumerate(levels):
        xs = [i + (j - (len(levels) - 1) / 2) * width for i in range(len(stats))]
        axes[1].bar(xs, [s["levels"].get(lv, 0.0) for _, s in stats], width, label=f"level {lv}", color=f"C{j}")
    axes[1].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes[1].set_ylabel("held-out pass@1 at the end, by level")
    axes[1].legend(fontsize=8)

    axes[2].barh(
        range(len(names)), [s["tokens"] for _, s in stats], color=["black" if n == "grpo" else "C7" for n in names]
    )
    for i, (_, s) in enumerate(stats):
        axes[2].text(s["tokens"], i, f" {s['steps']} steps", va="center", fontsize=7)
    axes[2].set_yticks(range(len(names)), names, fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlabel("generated tokens in total")
    for ax in axes:
        ax.grid(alpha=0.3)
    save(fig, args.out)

    head = "| preset | steps | tokens | mixed groups (run) | (2nd half) | pass@1 | " + " | ".join(
        f"level {lv}" for lv in levels
    )
    print(head + " |")
    print("|" + " --- |" * (6 + len(levels)))
    for label, s in stats:
        lv = " | ".join(f"{s['levels'].get(x, float('nan')):.3f}" for x in levels)
        print(
            f"| {label} | {s['steps']} | {s['tokens']:.0f} | {s['mixed']:.3f} | {s['mixed_2nd_half']:.3f} | "
            f"{s['pass1']:.3f} | {lv} |"
        )


if __name__ == "__main__":
    main()
