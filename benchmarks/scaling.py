"""How anypo's GRPO step time scales with the group size G and the completion length.

W1 (see README.md in this folder) with G in {4, 8, 16} samples per prompt at 64 new tokens, and
completion lengths {32, 64, 128} at G = 8. So that the length is what it says, end-of-sequence is
disabled in the engine for this benchmark (every completion runs to the limit); the reward is the
task's, so most of these long completions score 0 and the loss still does its full work (GRPO gives
zero advantage to all-equal groups, but anypo never skips them).

    python benchmarks/scaling.py --steps 2 [--precision bf16] [--kl 0.04]

Prints one markdown row per setting: median seconds per step and per phase, and the response
tokens per second of the whole step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

from anypo.algorithms import PRESETS
from anypo.config import TrainConfig
from anypo.engines.base import SamplingConfig
from anypo.train import Context

PHASES = ["generate", "prepare", "forward", "backward", "optimizer", "step"]


def run(G: int, length: int, args) -> dict[str, float]:
    algo = PRESETS["grpo"].build()
    regs = tuple(dataclasses.replace(r, coef=args.kl) for r in algo.regularizers) if args.kl else ()
    cfg = TrainConfig(
        algo=dataclasses.replace(algo, regularizers=regs),
        prompts_per_step=4,
        samples_per_prompt=G,
        lr=1e-5,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=length),
        eval_every=0,
        save_every=10**9,
        progress=False,
        precision=args.precision,
        out_dir=tempfile.mkdtemp(prefix="anypo-scaling-"),
    )
    ctx = Context.build(cfg, Path(cfg.out_dir))
    ctx.engine.eos_ids = torch.zeros(0, dtype=torch.long)  # benchmark only: every completion is `length` long
    rows = []
    for step in range(1, args.warmup + args.steps + 1):
        batch, m = ctx.step(step)
        if step > args.warmup:
            rows.append({**m, "tokens": float(batch.response_mask.sum())})
    out = {p: statistics.median(r[f"time/{p}_s"] for r in rows) for p in PHASES}
    out["tokens"] = statistics.median(r["tokens"] for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="measured steps per setting")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--kl", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    grid = [(4, 64), (8, 64), (16, 64), (8, 32), (8, 128)]
    print(f"precision {args.precision}, KL {args.kl}, 4 prompts, median of {args.steps} steps after {args.warmup}")
    print("| G | new tokens | response tokens | " + " | ".join(f"{p} s" for p in PHASES) + " | tokens/s |")
    print("|---" * (4 + len(PHASES)) + "|")
    for G, length in grid:
        r = run(G, length, args)
        cells = " | ".join(f"{r[p]:.2f}" for p in PHASES)
        print(f"| {G} | {length} | {r['tokens']:.0f} | {cells} | {r['tokens'] / r['step']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
