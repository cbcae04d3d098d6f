"""What the exploration and entropy parts cost on top of GRPO's W1 step (anypo alone).

The full-vocabulary quantities some parts need (entropy with its gradient, a min-p proxy of the old
policy, a second pass at another temperature, the exact KL over the vocabulary) must keep the W1
step within 1.5x of plain GRPO's while the part acts, and cost nothing when it does not.

Method: one W1 rollout batch (4 prompts x 8 samples, at most 64 new tokens, the embedded model in
float32) is generated once from the initial weights. Then, for each preset, a fresh trainer with that
preset's algorithm and W1's batch shape trains on copies of the same batch: ``--warmup`` + ``--steps``
updates, each timed from the old-pass (what the parts need) through the last optimizer step (a
preset may take several optimizer steps per rollout batch, as MDPO's 5: the table gives the count
and the update time per optimizer step). Generation
is the same for every preset (none of these parts changes sampling), so the W1 step of a preset is
the measured generation time plus its median update time, and its ratio to GRPO's is printed.

    python benchmarks/exploration_cost.py                       # grpo and every exploration preset
    python benchmarks/exploration_cost.py --presets grpo epo --steps 2

The last line is ``max ratio to grpo (W1 step): X``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_vs_trl import W1, w1_train_config  # noqa: E402

DEFAULT_PRESETS = ("grpo", "epo", "lp_reg", "llds", "dcpo", "clip_cov", "kl_cov", "rover", "mdpo_lm")


def build(preset: str, tmp: str):
    """A W1 trainer (fresh weights from the embedded model) with ``preset``'s algorithm."""
    from anypo.algorithms import PRESETS
    from anypo.models import ModelConfig
    from anypo.train import Context

    cfg = w1_train_config(
        0.0,
        name=f"cost-{preset}",
        steps=100,
        max_new_tokens=W1["max_new_tokens"],
        micro_batch_size=W1["micro_batch_size"],
        precision="fp32",
        seed=0,
        out_dir=tmp,
        model=ModelConfig(),
    )
    cfg = dataclasses.replace(cfg, algo=PRESETS[preset].build())
    torch.manual_seed(0)
    run_dir = Path(tmp) / preset
    run_dir.mkdir(parents=True, exist_ok=True)
    return Context.build(cfg, run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    ap.add_argument("--steps", type=int, default=3, help="measured updates per preset")
    ap.add_argument("--warmup", type=int, default=1, help="updates per preset excluded from the statistics")
    ap.add_argument("--out", default=None, help="write the per-update records here (JSON)")
    args = ap.parse_args()
    if args.presets[0] != "grpo":
        args.presets = ["grpo", *[p for p in args.presets if p != "grpo"]]
    torch.set_num_threads(W1["threads"])
    tmp = tempfile.mkdtemp(prefix="exploration-cost-")

    ctx = build("grpo", tmp)
    t = time.perf_counter()
    batch, rollout_metrics = ctx.rollout(1)
    gen_s = time.perf_counter() - t
    tokens = int(batch.response_mask.sum())
    print(f"W1 rollout: {batch.num_seqs} samples, {tokens} response tokens, generation {gen_s:.2f} s", flush=True)
    ctx.close()
    del ctx

    records: dict[str, list[dict]] = {}
    for preset in args.presets:
        ctx = build(preset, tmp)
        # every step trains on a copy of the recorded batch: no generation, the same tokens for every preset
        ctx.rollout = lambda step, b=batch, m=rollout_metrics: (copy.deepcopy(b), dict(m))
        recs = []
        for step in range(1, args.warmup + args.steps + 1):
            _, m = ctx.step(step)
            keep = {k: v for k, v in m.items() if k.startswith("time/") or k == "train/optimizer_steps"}
            recs.append(keep | {"step": step})
        ctx.close()
        del ctx
        records[preset] = recs
        upd = [r["time/prepare_s"] + r["time/train_s"] for r in recs[args.warmup :]]
        print(f"{preset:<10} update {statistics.median(upd):6.2f} s (median of {len(upd)})", flush=True)

    def med(preset: str, key: str) -> float:
        return statistics.median(r[key] for r in records[preset][args.warmup :])

    base = gen_s + med("grpo", "time/prepare_s") + med("grpo", "time/train_s")
    print(f"\nW1 step = generation {gen_s:.2f} s (shared) + the preset's update; {tokens} response tokens")
    print(
        "| preset | old pass + advantages (s) | update (s) | optimizer steps | update per optimizer step (s) | W1 step (s) | ratio to grpo |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for preset in args.presets:
        prep, train = med(preset, "time/prepare_s"), med(preset, "time/train_s")
        step = gen_s + prep + train
        worst = max(worst, step / base)
        opt = med(preset, "train/optimizer_steps")
        per = train / max(opt, 1.0)
        print(f"| `{preset}` | {prep:.2f} | {train:.2f} | {opt:.0f} | {per:.2f} | {step:.2f} | {step / base:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"generate_s": gen_s, "tokens": tokens, "records": records}, indent=1))
    print(f"max ratio to grpo (W1 step): {worst:.2f}")


if __name__ == "__main__":
    main()
