"""The reward-hacking figure of docs/algorithms/orpo_proxy.md: the proxy reward the runs trained on, the
true reward on the held-out split and the response length against the step, one line per run (a run
directory each, labelled by its preset), from the runs' metrics.jsonl alone.

    python scripts/proxy_figure.py runs/proxy/proxy_len_* --out docs/img/proxy/length_proxy.png
"""

from __future__ import annotations

import json

from _figure import pyplot, run_args, save

from anypo.runs import read_jsonl
from anypo.stats import trailing_mean

PANELS = (
    ("reward/mean", "proxy reward (training samples)", True),
    ("eval/pass@1", "true reward: held-out pass@1", False),
    ("response/length_mean", "response length (tokens)", True),
)


def main() -> None:
    args = run_args(
        __doc__, "docs/img/proxy/length_proxy.png", 3, "moving mean over this many steps (training metrics)"
    )
    plt = pyplot()

    cfgs = [json.loads((r / "config.json").read_text()) for r in args.runs]
    seeds = {c["seed"] for c in cfgs}
    runs = [(c["preset"], c["seed"], read_jsonl(r / "metrics.jsonl")) for c, r in zip(cfgs, args.runs, strict=True)]
    runs.sort(key=lambda r: (r[0] != "grpo", r[0], r[1]))
    presets = sorted({r[0] for r in runs}, key=lambda p: (p != "grpo", p))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(14, 4))
    for preset, seed, rows in runs:  # one colour per preset, one line style per seed
        label = f"{preset}, seed {seed}" if len(seeds) > 1 else preset
        style = {"color": f"C{presets.index(preset) % 10}", "ls": ["-", "--", ":", "-."][sorted(seeds).index(seed) % 4]}
        for ax, (key, title, smooth) in zip(axes, PANELS, strict=True):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ys = [v for _, v in pts]
            ax.plot(
                [s for s, _ in pts],
                trailing_mean(ys, args.smooth) if smooth else ys,
                label=label,
                marker=None if smooth else "o",
                **style,
            )
            ax.set_title(title + (f", {args.smooth}-step mean" if smooth else ""), fontsize=10)
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save(fig, args.out)


if __name__ == "__main__":
    main()
