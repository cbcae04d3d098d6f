"""Training-phase cost on a W1-shaped batch: forward + backward of the GRPO loss, per layout and precision.

On one sampled batch of the embedded model (4 prompts x 8 samples, at most 64 new tokens) it times,
alternating so that machine noise hits every variant alike:

* ``padded``: one left/right-padded row per sequence through the model's own forward (logits for
  every response position, padding included);
* ``packed``: the rows of a prompt packed into one sequence with a block attention mask (the
  prompt runs once per group), and the fused chunked LM head + log-softmax on response tokens only
  (``anypo.policy.response_logprobs``, the trainer's default);
* each in float32 and under bfloat16 autocast (``--precisions``).

It also prints how far each variant's log-probabilities are from the float32 padded ones.

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


def step_time(model, batch: RolloutBatch, micro: int, pack: bool, precision: str) -> tuple[float, torch.Tensor]:
    """Seconds for forward + backward over ``batch`` in micro-batches; and the [N, T] log-probs."""
    loss_fn, Cfg = get("policy_loss", "ppo_clip")
    cfg = Cfg(aggregation="seq_mean_token_mean")
    model.zero_grad(set_to_none=True)
    lp = torch.zeros(batch.response_mask.shape)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    t = time.perf_counter()
    for idx, mb in micro_batches(batch, micro):
        with autocast:
            out = response_logprobs(model, mb, pack=pack)
            loss = loss_fn(out, mb, cfg).loss
        loss.backward()
        lp[idx, : out.logprobs.shape[1]] = out.logprobs.detach()
    return time.perf_counter() - t, lp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = models.load_model(), models.load_tokenizer()
    model.train()
    batch = sample_batch(model, tok, 4, 8, 64)
    n_tok = int(batch.response_mask.sum())
    p_tok = int(batch.prompt_mask.sum())
    print(f"batch: 32 sequences, {n_tok} response tokens (padded {batch.response_mask.numel()}), {p_tok} prompt tokens")
    variants = [(m, layout, prec) for m in args.micro for layout in ("padded", "packed") for prec in args.precisions]
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    lps: dict[tuple, torch.Tensor] = {}
    for _ in range(args.reps):
        for v in variants:
            sec, lp = step_time(model, batch, v[0], v[1] == "packed", v[2])
            times[v].append(sec)
            lps[v] = lp
    mask = batch.response_mask.bool()
    ref = lps[(args.micro[0], "padded", "fp32")] if "fp32" in args.precisions else None
    print(
        f"{'layout':<10}{'precision':>10}{'micro':>6}{'median s':>10}{'resp tok/s':>12}{'|dlogp| vs fp32 padded':>24}"
    )
    for v in variants:
        med = statistics.median(times[v])
        diff = f"{(lps[v] - ref)[mask].abs().mean():.2e}" if ref is not None else "-"
        print(f"{v[1]:<10}{v[2]:>10}{v[0]:>6}{med:>10.2f}{n_tok / med:>12.0f}{diff:>24}", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
