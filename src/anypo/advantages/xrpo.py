"""XRPO's novelty-aware advantage sharpening: the GRPO z-score plus a bonus for correct responses
that the policy found unlikely.

Only the exploitation half of XRPO lives here. Its exploration half (the uncertainty-driven rollout
allocator and the in-context seeding of all-wrong prompts) changes which and how many samples a
prompt gets, which is the sampler's and rollout's business (the data/curricula issue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast, sequence_rewards
from anypo.ops import group_stats, masked_sum, zero_masked
from anypo.types import RolloutBatch

__all__ = ["XRPOAdvantage", "novelty_bonus", "xrpo"]


@dataclass(frozen=True)
class XRPOAdvantage(GroupRelativeConfig):
    """XRPO novelty-aware advantage sharpening (the exploitation part of XRPO).

    Paper: U. Bamba, M. Fang, Y. Yu, H. Zheng, F. Lai, "XRPO: Pushing the limits of GRPO with
    Targeted Exploration and Exploitation", https://arxiv.org/abs/2510.06672 (the advantage-sharpening
    equation of the method section; its number could not be read). RECONSTRUCTED: the official code
    (github.com/UIUC-MLSys/XRPO) could not be retrieved; the formula follows a review of the paper
    (themoonlight.io) and the third-party implementation ``Wodlfvllf/grpo-composer``
    (``grpo_composer/core/advantages/novelty_sharpening.py``):

    * ``A_i = (R_i - mean_g R) / (std_g R + eps)`` (GRPO, unbiased std);
    * ``s_i = (1/|o_i|) sum_t m_it lp_it`` the length-normalised log-likelihood of response ``i``
      under the behaviour policy (``old_logprobs``: the policy that sampled it, which is the policy
      being trained when advantages are computed);
    * ``eta_i = exp(s_i - mean_g s)``: < 1 for a response less likely than its group's average;
    * ``A+_i = A_i + min(max(lambda_n (1 - eta_i), 0), kappa |A_i|)`` for ``A_i > 0`` (``scope=
      "correct"``); other responses keep ``A_i``.

    Choices where the sources are silent or disagree (UNVERIFIED): the bonus goes to correct
    responses only (``A_i > 0``), following the abstract ("amplify low-probability yet correct
    responses"); the third-party code adds it to every response with cap ``kappa |A_i|``
    (``scope="all"``), which also softens the penalty of unlikely wrong answers. ``lambda_n = 1``,
    ``kappa = 1`` are the third-party defaults. The group mean of ``s`` is over the whole group (not
    the correct subset); responses without tokens are left out of it and get no bonus.

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``old_logprobs [N, T]``, ``response_mask [N, T]``
    -> ``[N, T]``.
    """

    eps: float = 1e-6
    """Added to the group std before dividing (GRPO)."""
    novelty_coef: float = 1.0
    """lambda_n: scale of the novelty bonus lambda_n (1 - eta) (UNVERIFIED; third-party default)."""
    bonus_cap: float = 1.0
    """kappa: the bonus is at most kappa |A_i| (UNVERIFIED; third-party default)."""
    scope: Literal["correct", "all"] = "correct"
    """correct: sharpen only A_i > 0 (the abstract); all: every response (the third-party code)."""

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"XRPOAdvantage.eps must be >= 0, got {self.eps}")
        if self.novelty_coef < 0:
            raise ValueError(f"XRPOAdvantage.novelty_coef (lambda_n) must be >= 0, got {self.novelty_coef}")
        if self.bonus_cap < 0:
            raise ValueError(f"XRPOAdvantage.bonus_cap (kappa) must be >= 0, got {self.bonus_cap}")
        if self.scope not in ("correct", "all"):
            raise ValueError(f"XRPOAdvantage.scope must be 'correct' or 'all', got {self.scope!r}")

    @property
    def needs_old_logprobs_before_update(self) -> bool:
        """The advantage reads the behaviour policy's log-probs of the sampled tokens."""
        return True


def novelty_bonus(A: Tensor, seq_ll: Tensor, has_tokens: Tensor, group_ids: Tensor, cfg: XRPOAdvantage) -> Tensor:
    """[N] the bonus ``min(max(lambda_n (1 - eta_i), 0), kappa |A_i|)`` (0 outside ``scope``).

    Args:
        A: [N] GRPO advantages.
        seq_ll: [N] length-normalised log-likelihoods ``s_i``.
        has_tokens: [N] bool, responses with at least one token (the others are out of the mean).
        group_ids: [N] prompt ids.
        cfg: lambda_n, kappa, scope.
    """
    w = has_tokens.to(A.dtype)
    gsum, _, _ = group_stats(seq_ll * w, group_ids)  # [N] mean over all members (zeros for empty ones)
    gcount, _, _ = group_stats(w, group_ids)  # [N] fraction of members with tokens
    s_bar = gsum / gcount.clamp_min(1e-12)  # [N] mean of s over the members with tokens
    eta = torch.exp(seq_ll - s_bar)  # [N] novelty: < 1 for unlikely responses
    bonus = torch.minimum((cfg.novelty_coef * (1.0 - eta)).clamp_min(0.0), cfg.bonus_cap * A.abs())
    keep = has_tokens & ((A > 0) if cfg.scope == "correct" else torch.ones_like(has_tokens))
    return torch.where(keep, bonus, torch.zeros_like(bonus))


@ADVANTAGES.register("xrpo", config=XRPOAdvantage)
def xrpo(batch: RolloutBatch, cfg: XRPOAdvantage) -> Tensor:
    """XRPO: ``A+_i = A_i + min(max(lambda_n (1 - exp(s_i - mean_g s)), 0), kappa |A_i|)``, broadcast.

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``old_logprobs [N, T]``, ``response_mask [N, T]``.
        cfg: GRPO epsilon, lambda_n, kappa, scope.

    Returns:
        [N, T] advantages in the dtype of ``rewards``. Records with ``batch.add_metric`` (the loop's
        ``advantage/*``) ``bonus_frac``, the share of the responses given a bonus (> 0), and
        ``bonus_mean``, the mean bonus over those responses (0 when none).
    """
    R = sequence_rewards(batch)  # [N]
    mean, std, _ = group_stats(R, batch.group_ids)
    A = (R - mean) / (std + cfg.eps)  # [N] GRPO
    hint = "XRPO scores each response by its log-likelihood under the behaviour policy (the rollout engine's log-probs)"
    old = batch.require("old_logprobs", hint).to(R.dtype)
    mask = batch.response_mask.to(R.dtype)
    length = mask.sum(-1)  # [N]
    seq_ll = masked_sum(zero_masked(old, mask), mask, dim=-1) / length.clamp_min(1.0)  # [N] s_i
    bonus = novelty_bonus(A, seq_ll, length > 0, batch.group_ids, cfg)
    given = bonus > 0  # [N]
    batch.add_metric("bonus_frac", given.to(R.dtype).mean() if R.numel() else 0.0)  # advantage/bonus_frac
    batch.add_metric("bonus_mean", bonus[given].mean() if bool(given.any()) else 0.0)  # advantage/bonus_mean
    return broadcast(A + bonus, batch)
