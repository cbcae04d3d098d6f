"""Do the fast paths learn the same thing? W1 reward trajectories of anypo's paths, same seed.

Runs W1 (KL 0; see README.md in this folder) for ``--steps`` steps with each variant, from the same
initial weights and seed:

* ``padded fp32``: the unoptimised path, one padded row per sequence (``pack_prompts=False``)
  through PyTorch's default float32 linear (MKL; ``onednn_linear=False``);
* ``packed fp32``: the default, prompts packed, the fused chunked LM head, linears on oneDNN;
* ``packed bf16``: the default with ``precision="bf16"`` (bfloat16 autocast).

Floating-point differences make the sampled trajectories diverge after the first update, so the
comparison is statistical: the mean reward per step of each variant against the padded path, with
a two-sided permutation test on the per-step means (10,000 permutations). Also prints each
variant's median step time.

    python benchmarks/learning_equivalence.py --steps 20
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import statistics
import tempfile
from pathlib import Path

import torch

from anypo.algorithms import PRESETS
from anypo.config import TrainConfig
from anypo.engines.base import SamplingConfig
from anypo.models import ModelConfig
from anypo.train import Context

VARIANTS = {
    "padded fp32": {"pack_prompts": False, "precision": "fp32", "model": ModelConfig(onednn_linear=False)},
    "packed fp32": {"pack_prompts": True, "precision": "fp32"},
    "packed bf16": {"pack_prompts": True, "precision": "bf16"},
}


def trajectory(steps: int, seed: int, **overrides) -> tuple[list[float], list[float]]:
    """Per-step mean reward and step seconds of W1 with ``overrides``."""
    algo = dataclasses.replace(PRESETS["grpo"].build(), regularizers=())
    cfg = TrainConfig(
        algo=algo,
        steps=steps,
        lr=1e-5,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=64),
        eval_every=0,
        save_every=10**9,
        progress=False,
        seed=seed,
        out_dir=tempfile.mkdtemp(prefix="anypo-equiv-"),
        **overrides,
    )
    random.seed(seed)
    torch.manual_seed(seed)
    ctx = Context.build(cfg, Path(cfg.out_dir))
    rewards, secs = [], []
    for step in range(1, steps + 1):
        _, m = ctx.step(step)
        rewards.append(m["reward/mean"])
        secs.append(m["time/step_s"])
        print(f"  step {step}: reward {m['reward/mean']:.3f}  {m['time/step_s']:.1f} s", flush=True)
    del ctx
    gc.collect()
    return rewards, secs


def permutation_p(a: list[float], b: list[float], n: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of |mean(a) - mean(b)| under random relabelling of the pooled values."""
    rng = random.Random(seed)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    pooled, k, hits = a + b, len(a), 0
    for _ in range(n):
        rng.shuffle(pooled)
        hits += abs(statistics.fmean(pooled[:k]) - statistics.fmean(pooled[k:])) >= observed - 1e-12
    return (hits + 1) / (n + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {}
    for name in args.variants:
        print(name, flush=True)
        results[name] = trajectory(args.steps, args.seed, **VARIANTS[name])
    base = results.get("padded fp32")
    print("\n| variant | mean reward (± SE) over steps | p vs padded fp32 | median step s |")
    print("|---|---|---|---|")
    for name, (r, s) in results.items():
        se = statistics.stdev(r) / len(r) ** 0.5
        p = f"{permutation_p(r, base[0]):.2f}" if base is not None and name != "padded fp32" else "-"
        print(f"| {name} | {statistics.fmean(r):.3f} ± {se:.3f} | {p} | {statistics.median(s):.1f} |")


if __name__ == "__main__":
    main()
