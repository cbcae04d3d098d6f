"""ARM (ProGRPO): GRPO advantages shifted by prompt confidence minus answer confidence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.outcome import (
    ADVANTAGES,
    GroupRelativeConfig,
    broadcast,
    correctness_or_reward,
    sequence_rewards,
)
from anypo.ops import group_reduce, group_stats
from anypo.types import RolloutBatch

__all__ = ["ARMAdvantage", "PROMPT_MEAN_LOGPROBS", "answer_confidence", "arm"]

PROMPT_MEAN_LOGPROBS = "old_prompt_mean_logprobs"
"""Key of ``RolloutBatch.extras``: [N] mean log-probability of each row's prompt tokens under the
behaviour policy (``anypo.rollout.old_pass.prompt_mean_logprobs``; ``needs_old_prompt_logprobs``)."""


def answer_confidence(old_logprobs: Tensor, mask: Tensor, low_frac: float) -> Tensor:
    """[N] ``exp(mean of the k lowest token log-probs)`` of each response, ``k = max(1, ceil(low_frac |o_i|))``.

    ``low_frac = 1``: ``exp(mean_t lp_t)``, the inverse perplexity of the whole answer. An empty
    response gets NaN (the caller gives it no shift).
    """
    on = mask != 0
    lengths = on.sum(-1)  # [N]
    big = torch.finfo(old_logprobs.dtype).max
    sorted_lp, _ = torch.where(on, old_logprobs, torch.full_like(old_logprobs, big)).sort(dim=-1)  # lowest first
    # ceil with a little slack so that e.g. 15 * 0.2 = 3.0000000000000004 keeps 3 tokens, not 4
    k = torch.clamp(torch.ceil(lengths.to(torch.float64) * low_frac - 1e-9), min=1).to(torch.long)  # [N]
    keep = torch.arange(old_logprobs.shape[-1])[None, :] < k[:, None]  # the k lowest of each row
    total = torch.where(keep, sorted_lp, torch.zeros_like(sorted_lp)).sum(-1)
    conf = torch.exp(total / k.to(old_logprobs.dtype))
    return torch.where(lengths > 0, conf, torch.full_like(conf, math.nan))


@dataclass(frozen=True)
class ARMAdvantage(GroupRelativeConfig):
    """ProGRPO's Advantage Re-weighting Mechanism: GRPO's advantage plus ``alpha (c(q) - c(o|q))``.

    Paper: P. Li, E. Goncharova, A. Kuznetsov, I. Oseledets, "Back to Basics: Revisiting Exploration
    in Reinforcement Learning for LLM Reasoning via Generative Probabilities",
    https://arxiv.org/abs/2602.05281 (the ARM advantage; equation number not read). The outer formula
    is from a third-party review of the paper (themoonlight.io), no code was found:

        A_i  = (R_i - mean_g R) / (std_g R + delta)
        A~_i = A_i                                   if sum_{k in g} r_k = 0 (every answer wrong)
             = A_i + alpha (c(q) - c(o_i | q))       otherwise

    with ``c(q)`` the prompt confidence (from the prompt's perplexity) and ``c(o_i | q)`` the answer
    confidence. Reconstructed (UNVERIFIED): ``c(q) = exp(mean_k log pi_old(q_k | q_<k))`` = 1 / PPL(q)
    over the prompt tokens (chat template included) at the sampling temperature; ``c(o | q) =
    exp(mean of the lowest-probability share low_frac of the answer's token log-probs under the
    behaviour policy)``: a paper summary (arxivlens) says the confidence computation concentrates on
    roughly the 20% lowest-probability token positions ("Low-Probability Token Length
    Normalization"), hence ``low_frac = 0.2``; ``low_frac = 1`` is the whole answer's inverse
    perplexity. ``alpha = 0.5`` is a guess. Every answer of a group that is not all wrong is shifted,
    correct or not (as the formula reads). "All wrong" is judged on the task's correctness
    (``extras["correct"]``) when the batch has it, else on the reward; ``A`` on the reward, as GRPO.

    Effect: in a group with a correct answer, an over-confident answer (``c(o|q) > c(q)``) gets a
    smaller advantage and an under-explored one a larger: the paper's equalisation of confidence over
    correct paths against GRPO's mode collapse.

    Needs the prompt tokens' log-probabilities under the behaviour policy,
    ``extras["old_prompt_mean_logprobs"]`` [N] (``needs_old_prompt_logprobs``: the loop's behaviour
    pass runs one forward per distinct prompt), and ``old_logprobs``.

    Shapes: ``rewards`` [N], ``group_ids`` [N], ``old_logprobs`` and ``response_mask`` [N, T],
    ``extras["old_prompt_mean_logprobs"]`` [N] -> advantages [N, T].
    """

    alpha: float = 0.5
    """Weight of the confidence shift (UNVERIFIED)."""
    low_frac: float = 0.2
    """Share of an answer's lowest-probability tokens its confidence is computed from (1: all)."""
    eps: float = 1e-6
    """delta: added to the group std (GRPO)."""

    def __post_init__(self) -> None:
        if not 0 < self.low_frac <= 1:
            raise ValueError(f"ARMAdvantage.low_frac must be in (0, 1] (1: every answer token), got {self.low_frac}")
        if not self.alpha >= 0:
            raise ValueError(f"ARMAdvantage.alpha must be >= 0 (0: GRPO), got {self.alpha}")

    @property
    def needs_old_prompt_logprobs(self) -> bool:
        """The behaviour policy's mean log-probability of each row's prompt tokens must be in the batch."""
        return True

    @property
    def needs_old_logprobs_before_update(self) -> bool:
        """The advantage reads the behaviour policy's log-probs of the sampled tokens."""
        return True


@ADVANTAGES.register("arm", config=ARMAdvantage)
def arm(batch: RolloutBatch, cfg: ARMAdvantage) -> Tensor:
    """ARM: ``A_i + alpha (c(q) - c(o_i | q))`` in groups with a correct answer, ``A_i`` elsewhere.

    Args:
        batch: ``rewards``, ``group_ids``, ``response_mask``, ``old_logprobs``,
            ``extras["old_prompt_mean_logprobs"]``; optional ``extras["correct"]``.
        cfg: alpha, low-probability share, GRPO epsilon.

    Returns:
        [N, T] advantages in the dtype of ``rewards``. Logs ``arm/prompt_conf`` and
        ``arm/answer_conf`` (means over the batch's responses), ``arm/shift_abs`` (mean
        ``|alpha (c(q) - c(o|q))|`` over shifted responses), ``arm/shifted_frac``.
    """
    R = sequence_rewards(batch)  # [N]
    mean, std, _ = group_stats(R, batch.group_ids)
    A = (R - mean) / (std + cfg.eps)  # [N] GRPO
    prompt_lp = batch.extras.get(PROMPT_MEAN_LOGPROBS)
    if prompt_lp is None:
        raise ValueError(
            f"batch.extras[{PROMPT_MEAN_LOGPROBS!r}] is missing: ARM needs the prompt tokens' log-probs "
            "(needs_old_prompt_logprobs; the loop's behaviour pass fills it)"
        )
    hint = "the rollout engine (or a forward pass before the update) must fill old_logprobs"
    old = batch.require("old_logprobs", hint).to(R.dtype)
    c_q = torch.exp(torch.as_tensor(prompt_lp, dtype=R.dtype))  # [N]
    c_o = answer_confidence(old, batch.response_mask, cfg.low_frac)  # [N], NaN for an empty answer
    solved = group_reduce(correctness_or_reward(batch), batch.group_ids, "sum") != 0  # [N] not all wrong
    shift = cfg.alpha * (c_q - c_o)
    use = solved & torch.isfinite(shift)
    A = A + torch.where(use, shift, torch.zeros_like(shift))
    has = torch.isfinite(c_o)
    batch.add_metric("arm/prompt_conf", c_q.mean() if len(c_q) else 0.0)
    batch.add_metric("arm/answer_conf", c_o[has].mean() if bool(has.any()) else 0.0)
    batch.add_metric("arm/shift_abs", shift[use].abs().mean() if bool(use.any()) else 0.0)
    batch.add_metric("arm/shifted_frac", use.to(R.dtype).mean() if len(use) else 0.0)
    return broadcast(A, batch)
