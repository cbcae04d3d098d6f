"""Set-up helpers of the online loop: prompt tokenisation, rewards and verifier, optimizer, LR schedule, final export.

The scaffold every loop shares (run directory, checkpoints, logs, progress, trackers, plots, report)
is ``anypo.run``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def tokenize_prompts(examples, tokenizer, max_prompt_tokens: int) -> tuple[list, list[list[int]], int]:
    """Chat-templated token ids of each example; prompts over the limit are skipped and counted.

    Returns the kept examples, their token ids (aligned) and the number skipped. A prompt is never
    truncated: a cut prompt would train the policy on a question it was not asked.
    """
    from anypo.tasks import format_prompt

    kept, ids, skipped = [], [], 0
    for ex in examples:
        toks = tokenizer(format_prompt(ex, tokenizer), add_special_tokens=False)["input_ids"]
        if len(toks) > max_prompt_tokens:
            skipped += 1
            continue
        kept.append(ex)
        ids.append(list(toks))
    if skipped:
        log.warning("skipped %d prompts longer than max_prompt_tokens=%d (never truncated)", skipped, max_prompt_tokens)
    if not kept and examples:
        raise ValueError(f"every prompt is longer than max_prompt_tokens={max_prompt_tokens}; raise it")
    return kept, ids, skipped


def parse_reward_specs(specs) -> list[tuple[str, float]]:
    """``["math_answer=1", "my.py:fn=0.5", "format"]`` -> ``[(name_or_path, weight), ...]``."""
    out = []
    for spec in specs:
        name, sep, weight = spec.rpartition("=") if "=" in spec else (spec, "", "1")
        try:
            out.append((name if sep else spec, float(weight)))
        except ValueError:
            raise ValueError(
                f"reward spec {spec!r}: the weight after '=' must be a number, e.g. math_answer=1.0"
            ) from None
    return out


def make_reward(task, shaping: tuple = (), specs=()):
    """The task's default reward (or ``specs``) plus the method's reward shaping parts (weight 1 each)."""
    from anypo.rewards import combine

    base = parse_reward_specs(specs) if specs else list(task.default_reward())
    return combine([*base, *((part, 1.0) for part in shaping)])


def make_verifier(task):
    """``verify(example, text) -> 1.0 / 0.0``: the task's first (correctness) reward term alone.

    Returns the function and the component name under which the term appears in the reward.
    """
    from anypo.rewards import combine

    first = task.default_reward()[0]
    runner = combine([(first[0] if isinstance(first, tuple) else first, 1.0)])  # its score alone, whatever its weight
    name = runner.names[0]

    def verify(example, text: str) -> float:
        return runner(example.to_sample(text)).score

    return verify, name


def make_optimizer(params, cfg, *, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names (``RunOptions.optimizer``) over ``params``, with the run's lr,
    betas and weight decay.

    ``adamw``: ``torch.optim.AdamW`` (``fused``: torch's fused kernel, one per parameter and no foreach
    temporaries); ``adamw8bit``: :class:`anypo.optim.AdamW8bit` (8-bit moments, the same update, stochastic rounding
    seeded by the run's seed);
    ``adafactor``: ``torch.optim.Adafactor`` with ``lr`` as given (its relative-step cap; no betas).
    ``fused`` applies to adamw only.
    """
    params = list(params)
    if cfg.optimizer == "adamw":
        kw = {"fused": True} if fused else {}
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **kw)
    if cfg.optimizer == "adamw8bit":
        from anypo.optim import AdamW8bit

        return AdamW8bit(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, seed=cfg.seed)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from anypo.validate import OPTIMIZERS

    raise ValueError(f"--optimizer is {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg, total: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then constant, linear or cosine decay.

    ``total``: the planned optimizer steps; None: those of the online loop's ``cfg`` (steps x
    ppo_epochs x mini-batches per rollout).
    """
    if total is None:
        total = cfg.steps * cfg.algo.ppo_epochs * cfg.algo.minibatches(cfg.prompts_per_step)
    total = max(total, 1)
    warm = cfg.warmup_steps

    def factor(i: int) -> float:
        if i < warm:
            return (i + 1) / (warm + 1)
        frac = (i - warm) / max(total - warm, 1)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        if cfg.lr_schedule == "linear":
            return max(1.0 - frac, 0.0)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def export_final(model: torch.nn.Module, tokenizer, out: Path) -> None:
    """The final policy as a standard HF directory (LoRA merged) that transformers and vLLM load."""
    from anypo.models import is_lora

    export = model.merge_and_unload() if is_lora(model) else model
    out.mkdir(parents=True, exist_ok=True)
    export.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
