"""The off-policy group-REINFORCE family: REC (clipping as regularisation), OPMD and AsymRE.

All three are REINFORCE on the sampled tokens, ``L = -A * lp`` (``A = R - mean_g R``, the
``dr_grpo`` advantage, in the paper), made safe for off-policy data in two ways: REC drops tokens
whose ratio ``r = exp(lp - old)`` left a trust region (optionally weighting by ``sg[r]``); OPMD adds
a squared log-ratio penalty to the behaviour policy; AsymRE lowers the baseline by ``tau``. They
need the behaviour policy's log-probs as ``old_logprobs`` (for stale rollouts: the policy that
generated them, not a recomputation with the current one); none of them is restricted to
on-policy data.

Paper: C. Yao, Y. Chen et al., "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm:
Demystifying Some Myths About GRPO and Its Friends", https://arxiv.org/abs/2509.24203. Formulas
verified against the official code (Trinity-RFT ``trinity/algorithm/policy_loss_fn/
rec_policy_loss.py`` and ``examples/rec_gsm8k/README.md``); the paper's equation numbers are not
verified (its method section could not be read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.losses.common import (
    POLICY_LOSSES,
    PolicyLossConfig,
    RatioLossConfig,
    finish,
    log_ratio,
    policy_inputs,
    ratio_metrics,
    tis_weights,
)
from anypo.ops import masked_mean
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["REC", "AsymRE", "OPMD", "asymre", "opmd", "rec", "rec_in_range"]

ClipMode = Literal["none", "one_side", "two_side", "ring", "gspo_one_side"]
Weight = Literal[
    "none", "importance_sampling", "truncated_importance_sampling", "gspo_importance_sampling", "advantage"
]
_RATIO_WEIGHTS = ("importance_sampling", "truncated_importance_sampling", "gspo_importance_sampling")


@dataclass(frozen=True)
class REC(RatioLossConfig):
    """REC: group-relative REINFORCE with clipping as regularisation (and optional IS weights).

    Paper: https://arxiv.org/abs/2509.24203 (REC family); Trinity-RFT ``RECPolicyLossFn``.
    Per token, with ``r = sg[exp(lp - old)]``, ``s_i = sg[exp(mean_t (lp - old))]`` and the advantage ``A``:

        L = -A * w * 1[in_range] * lp,   reduced with ``aggregation`` (Trinity: token-mean)

    * ``in_range``: ``none`` all tokens; ``one_side`` ``(r <= 1 + eps_high and A >= 0) or
      (r >= 1 - eps_low and A <= 0)``; ``two_side`` ``1 - eps_low <= r <= 1 + eps_high``; ``ring``
      two_side or ``(A >= 0 and r <= 1 - eps_low_prime)`` or ``(A <= 0 and r >= 1 + eps_high_prime)``;
      ``gspo_one_side`` one_side with ``s_i`` in place of ``r``;
    * ``w``: ``none`` 1; ``importance_sampling`` ``r``; ``truncated_importance_sampling``
      ``clip(r, 1 - eps_low_prime, 1 + eps_high_prime)``; ``gspo_importance_sampling`` ``s_i``;
      ``advantage`` (RED-Weight) ``exp(A / temp)``.

    The README's variants: REC-OneSide-NoIS (the default here) = one_side + none; REC-OneSide-IS =
    one_side + importance_sampling (its gradient is that of GRPO's clipped surrogate); REC-TwoSide-IS;
    REC-Ring-NoIS (eps' 0.6 / 2.0); REC-GSPO-(No)IS = gspo_one_side with eps 3e-4 / 4e-4; RED-Weight =
    none + advantage; vanilla REINFORCE = none + none. Trinity writes the modes with hyphens
    (``one-side``). Deviation: Trinity forces ``seq-mean-token-mean`` for gspo_one_side; here the
    config's ``aggregation`` is always used (set ``seq_mean_token_mean`` for REC-GSPO). RED-Drop
    (``drop: balance``, a data filter of the advantage) is not implemented (UNVERIFIED, not read).
    The loss value depends on absolute log-probs; only its gradient is meaningful.
    """

    clip_mode: ClipMode = "one_side"
    """Which tokens keep their gradient: none | one_side | two_side | ring | gspo_one_side."""
    weight: Weight = "none"
    """Per-token weight (stop-gradient): none | importance_sampling | truncated_importance_sampling |
    gspo_importance_sampling | advantage."""
    eps_low: float = 0.2
    """Lower trust-region bound 1 - eps_low of the ratio."""
    eps_high: float = 0.2
    """Upper trust-region bound 1 + eps_high of the ratio."""
    eps_low_prime: float = 0.6
    """Ring: tokens with A >= 0 and r <= 1 - eps_low_prime keep their gradient; truncated IS lower bound."""
    eps_high_prime: float = 2.0
    """Ring: tokens with A <= 0 and r >= 1 + eps_high_prime keep their gradient; truncated IS upper bound."""
    temp: float = 1.0
    """Temperature of the RED-Weight weight exp(A / temp)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_mode not in ("none", "one_side", "two_side", "ring", "gspo_one_side"):
            raise ValueError(
                f"clip_mode must be none, one_side, two_side, ring or gspo_one_side, got {self.clip_mode!r}"
            )
        if self.weight not in ("none", "advantage", *_RATIO_WEIGHTS):
            raise ValueError(f"unknown weight {self.weight!r}")
        if not (
            0 < self.eps_low <= 1 and self.eps_high > 0 and 0 < self.eps_low_prime <= 1 and self.eps_high_prime > 0
        ):
            raise ValueError(
                "need 0 < eps_low <= 1, eps_high > 0, 0 < eps_low_prime <= 1, eps_high_prime > 0 (Trinity)"
            )
        if self.temp <= 0:
            raise ValueError(f"temp must be positive, got {self.temp}")

    @property
    def uses_ratio(self) -> bool:
        """Whether the loss needs ``old_logprobs`` (a clip mode or a ratio weight)."""
        return self.clip_mode != "none" or self.weight in _RATIO_WEIGHTS


def rec_in_range(r: Tensor, seq_r: Tensor, adv: Tensor, cfg: REC) -> Tensor:
    """[N, T] bool: tokens that keep their gradient under ``cfg.clip_mode`` (see :class:`REC`)."""
    lo, hi = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    if cfg.clip_mode == "none":
        return torch.ones_like(r, dtype=torch.bool)
    if cfg.clip_mode == "two_side":
        return (r >= lo) & (r <= hi)
    if cfg.clip_mode == "ring":
        return (
            ((r >= lo) & (r <= hi))
            | ((adv >= 0) & (r <= 1.0 - cfg.eps_low_prime))
            | ((adv <= 0) & (r >= 1.0 + cfg.eps_high_prime))
        )
    x = seq_r if cfg.clip_mode == "gspo_one_side" else r
    return ((x <= hi) & (adv >= 0)) | ((x >= lo) & (adv <= 0))  # one_side


@POLICY_LOSSES.register("rec", config=REC)
def rec(out: PolicyOutput, batch: RolloutBatch, cfg: REC) -> LossOutput:
    """REC: ``L = -A * sg[w] * 1[in_range] * lp``; ``dL/dlp = -A w 1[in_range]``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``advantages``, ``response_mask`` [N, T]; ``old_logprobs`` [N, T] when a clip mode or
            ratio weight is set.
        cfg: clip mode, weight, bounds, aggregation, TIS.

    Returns:
        0-d loss and ``policy/loss``, ``policy/clipfrac`` (tokens out of range), ``policy/weight_mean``
        (with a weight), and ``policy/ratio_*``, ``policy/approx_kl`` when ``old_logprobs`` is given.
    """
    lp, old, adv, mask = policy_inputs(out, batch, need_old=cfg.uses_ratio)
    if old is None and batch.old_logprobs is not None:
        old = policy_inputs(out, batch)[1]  # only for the ratio diagnostics
    metrics: dict[str, float] = {}
    with torch.no_grad():
        if old is not None:
            log_r = log_ratio(lp, old)  # [N, T]
            r = log_r.exp()
            seq_r = (log_r.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1.0)).exp()  # [N, 1]
            metrics |= ratio_metrics(log_r, mask)
        else:
            r = seq_r = torch.ones_like(lp)
        keep = rec_in_range(r, seq_r, adv, cfg)  # [N, T]
        if cfg.weight == "importance_sampling":
            w = r
        elif cfg.weight == "truncated_importance_sampling":
            w = r.clamp(1.0 - cfg.eps_low_prime, 1.0 + cfg.eps_high_prime)
        elif cfg.weight == "gspo_importance_sampling":
            w = seq_r.expand_as(r)
        elif cfg.weight == "advantage":
            w = (adv / cfg.temp).exp()
        else:
            w = torch.ones_like(r)
        coef = adv * w * keep.to(lp.dtype)  # [N, T] stop-gradient coefficient of lp
        metrics["policy/clipfrac"] = float(masked_mean((~keep).to(lp.dtype), mask))
        if cfg.weight != "none":
            metrics["policy/weight_mean"] = float(masked_mean(w, mask))
    weights, tis_metrics = tis_weights(batch, cfg, mask)
    return finish(-coef * lp, mask, batch, cfg, metrics | tis_metrics, weights)


@dataclass(frozen=True)
class OPMD(PolicyLossConfig):
    """OPMD: REINFORCE plus a squared log-ratio penalty to the behaviour policy.

    Paper: https://arxiv.org/abs/2509.24203 (OPMD reinterpreted as regularised REINFORCE; the REP
    family), after Kimi k1.5's online policy mirror descent ("Kimi k1.5: Scaling Reinforcement
    Learning with LLMs", https://arxiv.org/abs/2501.12599). Trinity-RFT ``rec`` with
    ``regularizer: k2``, ``regularizer_coef: 0.1``, no clipping, no weight:

        L = -A * lp + tau * (lp - old)^2,   dL/dlp = -A + 2 tau (lp - old)

    reduced with ``aggregation`` (token-mean). Kimi's ``1/2`` is absorbed into ``tau`` (as Trinity).
    Trinity's legacy ``opmd`` loss (``token_mean(-A lp) / (1 + tau)``) is a different, older form
    and is not this part. The loss value depends on absolute log-probs.
    """

    tau: float = 0.1
    """Coefficient of the squared log-ratio penalty (README: 0.1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")


@POLICY_LOSSES.register("opmd", config=OPMD)
def opmd(out: PolicyOutput, batch: RolloutBatch, cfg: OPMD) -> LossOutput:
    """OPMD: ``L = -A * lp + tau * (lp - old)^2``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T].
        cfg: tau, aggregation.

    Returns:
        0-d loss and ``policy/loss``, ``policy/sq_log_ratio`` (token mean of ``(lp - old)^2``),
        ``policy/ratio_*``, ``policy/approx_kl``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    d = lp - old  # [N, T]; unclamped: the penalty's gradient grows with the drift, as in Trinity
    metrics = ratio_metrics(log_ratio(lp.detach(), old), mask)
    metrics["policy/sq_log_ratio"] = float(masked_mean(d.detach().square(), mask))
    return finish(-adv * lp + cfg.tau * d.square(), mask, batch, cfg, metrics)


@dataclass(frozen=True)
class AsymRE(PolicyLossConfig):
    """AsymRE: REINFORCE with the baseline lowered by ``tau`` (asymmetric REINFORCE).

    Papers: C. Arnal et al., "Asymmetric REINFORCE for off-Policy Reinforcement Learning: Balancing
    positive and negative rewards", https://arxiv.org/abs/2506.20520 (baseline ``V < E[R]``);
    reinterpreted in https://arxiv.org/abs/2509.24203 as REINFORCE regularised by ``-tau * lp``
    (a forward-KL term; Trinity-RFT ``rec`` with ``regularizer: forward-kl``, coef 0.1):

        L = -(A + tau) * lp,   dL/dlp = -(A + tau)

    reduced with ``aggregation`` (token-mean). No ratio: ``old_logprobs`` is not used (only for
    diagnostics when present). The loss value depends on absolute log-probs.
    """

    tau: float = 0.1
    """How far the baseline is lowered (README: 0.1)."""


@POLICY_LOSSES.register("asymre", config=AsymRE)
def asymre(out: PolicyOutput, batch: RolloutBatch, cfg: AsymRE) -> LossOutput:
    """AsymRE: ``L = -(A + tau) * lp``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``advantages``, ``response_mask`` [N, T] (``old_logprobs`` optional, diagnostics).
        cfg: tau, aggregation.

    Returns:
        0-d loss and ``policy/loss``, ``policy/logprob_mean`` (and ``policy/ratio_*`` with
        ``old_logprobs``).
    """
    lp, _, adv, mask = policy_inputs(out, batch, need_old=False)
    metrics = {"policy/logprob_mean": float(masked_mean(lp.detach(), mask))}
    if batch.old_logprobs is not None:
        metrics |= ratio_metrics(log_ratio(lp.detach(), policy_inputs(out, batch)[1]), mask)
    return finish(-(adv + cfg.tau) * lp, mask, batch, cfg, metrics)
