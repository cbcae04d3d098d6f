"""Training-phase cost on a W1-shaped batch: forward + backward of the GRPO loss, per micro-batch layout.

Compares, on the same sampled batch of the embedded model (4 prompts x 8 samples, at most 64 new
tokens), the trainer's forward pass with prompt sharing (one prompt pass per group) against the
same rows given distinct group ids (every row runs its own prompt), for a few micro-batch sizes.

    python benchmarks/train_phase.py --reps 3
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from anypo import models
from anypo.engines.base import SamplingConfig
from anypo.engines.hf import HFEngine
from anypo.policy import micro_batches, response_logprobs
from anypo.registry import get
from anypo.rollout.groups import left_pad
from anypo.tasks import format_prompt, get_task
from anypo.types import RolloutBatch


def sample_batch(model, tok, prompts: int, group: int, max_new: int) -> RolloutBatch:
    task = get_task("addition")
    exs = task.train_examples(prompts)
    ids = [tok(format_prompt(e, tok), add_special_tokens=False)["input_ids"] for e in exs]
    gen = HFEngine(model, tok).generate(ids, group, SamplingConfig(max_new_tokens=max_new), seed=0)
    pid, pm = left_pad(ids, tok.pad_token_id)
    rewards = torch.rand(prompts * group, generator=torch.Generator().manual_seed(0)).round()
    b = RolloutBatch(
        response_mask=gen.response_mask,
        group_ids=torch.arange(prompts).repeat_interleave(group),
        rewards=rewards,
        prompt_ids=pid.repeat_interleave(group, 0),
        prompt_mask=pm.repeat_interleave(group, 0),
        response_ids=gen.response_ids,
        old_logprobs=gen.logprobs,
    )
    b.advantages = get("advantage", "grpo")[0](b, get("advantage", "grpo")[1]())
    return b


def step_time(model, batch: RolloutBatch, micro: int, share: bool) -> float:
    loss_fn, Cfg = get("policy_loss", "ppo_clip")
    cfg = Cfg(aggregation="seq_mean_token_mean")
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    for _, mb in micro_batches(batch, micro):
        loss_fn(response_logprobs(model, mb, share_prompt=share), mb, cfg).loss.backward()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro", type=int, nargs="*", default=[8, 16, 32])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = models.load_model(), models.load_tokenizer()
    model.train()
    batch = sample_batch(model, tok, 4, 8, 64)
    n_tok = int(batch.response_mask.sum())
    p_tok = int(batch.prompt_mask.sum())
    print(f"batch: 32 sequences, {n_tok} response tokens (padded {batch.response_mask.numel()}), {p_tok} prompt tokens")
    print(f"{'layout':<22}{'micro':>6}{'median s':>10}{'resp tok/s':>12}")
    for micro in args.micro:
        for name, share in (("prompt per row", False), ("shared prompt", True)):
            times = [step_time(model, batch, micro, share) for _ in range(args.reps)]
            med = statistics.median(times)
            print(f"{name:<22}{micro:>6}{med:>10.2f}{n_tok / med:>12.0f}", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
