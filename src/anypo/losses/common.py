"""What every policy loss shares: the config base (aggregation, truncated importance sampling),
input checks, the importance weights of the rollout/training mismatch, and ratio diagnostics.

Truncated importance sampling (TIS). A rollout engine (vLLM, SGLang) and the learner (FSDP) compute
slightly different probabilities for the same policy, so the data are mildly off-policy even at the
first update. With ``old_logprobs`` recomputed by the learner and ``rollout_logprobs`` reported by
the engine, the correction weight is ``w = pi_old / pi_rollout = exp(old - rollout)``:

* ``tis="token"``: one weight per token; ``tis="sequence"``: ``w_i = exp(sum_t m (old - rollout))``
  (the product of the token weights, verl's ``rollout_is="sequence"``) shared by every token of
  sequence ``i``; ``tis="geometric"``: ``w_i = exp(mean_t (old - rollout))`` (their geometric mean,
  AReaL's ``sequence_truncate`` / ``sequence_mask``, verl's geometric level), shared likewise;
* ``tis_mode="truncate"``: ``clamp(w, tis_floor, tis_cap)`` (TIS; no lower bound by default);
  ``"mask"``: ``w * 1[tis_floor <= w <= tis_cap]`` (masked IS: a token or sequence outside the band
  is dropped from the loss but still counts in the normaliser, which keeps the micro-batch sums
  exact).

Two named corrections are settings of these fields, usable with every ratio loss:

* **IcePop** (Ling Team, "Every Step Evolves: Scaling Reinforcement Learning for Trillion-Scale
  Thinking Model", https://arxiv.org/abs/2510.18855, the IcePop objective): token weights masked to
  ``[alpha, beta]``, ``M(w) = w`` inside and 0 outside, multiplying the clipped surrogate:
  ``tis="token", tis_mode="mask", tis_floor=alpha, tis_cap=beta`` (:func:`icepop`);
* **sequence-masked TIS** (``seq_tis``; AReaL ``behave_imp_weight_mode="sequence_mask"``, verl's
  sequence-level rollout rejection): one weight per sequence, the whole sequence dropped when it
  leaves the band: ``tis="geometric"`` (or ``"sequence"``), ``tis_mode="mask"`` (:func:`seq_tis`;
  ``tis_mode="truncate"`` clamps the sequence weight instead, AReaL's ``sequence_truncate``).

The weight is a constant (stop-gradient) multiplying the per-token loss before aggregation. A part
with ``tis`` set declares ``needs_rollout_logprobs``: the loop then recomputes ``old_logprobs`` with
the learner on every batch and keeps the engine's as ``rollout_logprobs`` (on a fp32 HF engine the
two agree and the weights are 1; under bf16 autocast or with vLLM they differ).
Reference for TIS: F. Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL
Training" (2025 blog, https://fengyao.notion.site/off-policy-rl); no arXiv paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from anypo.ops import AGGREGATIONS, Aggregation, aggregate, masked_mean, zero_masked
from anypo.registry import REGISTRIES
from anypo.types import LossOutput, PartConfig, PolicyOutput, RolloutBatch

POLICY_LOSSES = REGISTRIES["policy_loss"]
VALUE_LOSSES = REGISTRIES["value_loss"]

__all__ = [
    "POLICY_LOSSES",
    "VALUE_LOSSES",
    "PolicyLossConfig",
    "RatioLossConfig",
    "finish",
    "icepop",
    "log_ratio",
    "policy_inputs",
    "ratio_metrics",
    "seq_tis",
    "tis_weights",
]

# Log-ratios are clamped before exp() so that one wild token cannot overflow (verl clamps to +-20).
LOG_RATIO_CLAMP = 20.0


@dataclass(frozen=True)
class PolicyLossConfig(PartConfig):
    """Fields every policy loss has: how the per-token loss matrix is reduced."""

    aggregation: Aggregation = "token_mean"
    """token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm (see ops.aggregate)."""
    norm_length: float | None = None
    """Constant length of seq_mean_token_sum_norm (Dr. GRPO's L_max); None: the mini-batch's padded T."""

    aggregations: ClassVar[tuple[str, ...]] = AGGREGATIONS
    """The aggregations the loss accepts (a class constant, not a field): all of ``AGGREGATIONS`` unless
    its formula fixes the reduction (e.g. ROVER's token-mean regression)."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.aggregation not in self.aggregations:
            raise ValueError(
                f"{type(self).__name__}.aggregation must be one of {', '.join(self.aggregations)} (the loss's own "
                f"reduction), got {self.aggregation!r}"
            )
        if self.norm_length is not None and self.norm_length <= 0:
            raise ValueError(f"norm_length must be positive, got {self.norm_length}")


@dataclass(frozen=True)
class RatioLossConfig(PolicyLossConfig):
    """A policy loss with an importance ratio to ``old_logprobs``, plus the TIS option."""

    tis: Literal["token", "sequence", "geometric"] | None = None
    """Correct the rollout-engine/learner mismatch with exp(old - rollout) weights per token, per
    sequence (product) or per sequence (geometric mean); None disables."""
    tis_mode: Literal["truncate", "mask"] = "truncate"
    """truncate: clamp(w, tis_floor, tis_cap); mask: drop tokens (or sequences) with w outside [tis_floor, tis_cap]."""
    tis_cap: float = 2.0
    """Upper bound of the importance weight (IcePop's beta)."""
    tis_floor: float | None = None
    """Lower bound of the importance weight (IcePop's alpha); None: no lower bound."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tis not in (None, "token", "sequence", "geometric"):
            raise ValueError(f"tis must be None, 'token', 'sequence' or 'geometric', got {self.tis!r}")
        if self.tis_mode not in ("truncate", "mask"):
            raise ValueError(f"tis_mode must be 'truncate' or 'mask', got {self.tis_mode!r}")
        if not self.tis_cap > 0:
            raise ValueError(f"tis_cap must be positive, got {self.tis_cap}")
        if self.tis_floor is not None and not 0 <= self.tis_floor < self.tis_cap:
            raise ValueError(
                f"tis_floor must be in [0, tis_cap) or None, got {self.tis_floor} (tis_cap {self.tis_cap})"
            )

    @property
    def needs_rollout_logprobs(self) -> bool:
        """A correction compares the engine's log-probs with the learner's: both must be in the batch."""
        return self.tis is not None


def icepop(alpha: float = 0.5, beta: float = 5.0) -> dict:
    """The fields of a ratio-loss config that make its correction IcePop (token weights masked to
    [alpha, beta]; https://arxiv.org/abs/2510.18855): ``PPOClip(**icepop())``."""
    return {"tis": "token", "tis_mode": "mask", "tis_floor": alpha, "tis_cap": beta}


def seq_tis(low: float | None = None, high: float = 2.0, level: str = "geometric", mode: str = "mask") -> dict:
    """The fields of a ratio-loss config for sequence-level TIS: one weight per sequence (its
    geometric mean, or the product with ``level="sequence"``), the whole sequence masked
    (``mode="mask"``, AReaL's ``sequence_mask``) or its weight clamped (``"truncate"``) outside
    ``[low, high]``: ``PPOClip(**seq_tis(0.5, 2.0))``."""
    if level not in ("sequence", "geometric"):
        raise ValueError(f"seq_tis level must be 'sequence' or 'geometric', got {level!r}")
    return {"tis": level, "tis_mode": mode, "tis_floor": low, "tis_cap": high}


def policy_inputs(out: PolicyOutput, batch: RolloutBatch, need_old: bool = True) -> tuple[Tensor, ...]:
    """``(logprobs, old_logprobs or None, advantages, mask)``, all [N, T], checked.

    Everything is converted to the dtype of ``logprobs`` and set to 0 off the mask, so that padding
    holding -inf or garbage can neither produce nan nor receive a gradient.
    """
    mask = batch.response_mask.to(out.logprobs.dtype)
    if out.logprobs.shape != mask.shape:
        raise ValueError(
            f"PolicyOutput.logprobs has shape {tuple(out.logprobs.shape)}, response_mask {tuple(mask.shape)}"
        )
    lp = zero_masked(out.logprobs, mask)
    adv = batch.require("advantages", "compute them with an advantage part before the policy loss")
    adv = zero_masked(adv.to(lp.dtype), mask)
    old = None
    if need_old:
        hint = "store the behaviour policy's log-probs (rollout engine or a no-grad forward) before the update"
        old = zero_masked(batch.require("old_logprobs", hint).to(lp.dtype), mask)
    return lp, old, adv, mask


def log_ratio(lp: Tensor, old: Tensor) -> Tensor:
    """[N, T] ``clamp(lp - old, -20, 20)``."""
    return (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@torch.no_grad()
def tis_weights(batch: RolloutBatch, cfg: RatioLossConfig, mask: Tensor) -> tuple[Tensor | None, dict[str, float]]:
    """Stop-gradient importance weights ``pi_old / pi_rollout`` [N, T] (None when ``cfg.tis`` is None).

    Metrics: ``tis/weight_mean`` (before the bounds), ``tis/capped_frac`` and ``tis/floored_frac``
    (share of tokens whose weight is above ``tis_cap`` / below ``tis_floor``: truncated or masked).
    """
    if cfg.tis is None:
        return None, {}
    dtype = mask.dtype
    old = batch.require("old_logprobs", "TIS needs the learner's old_logprobs").to(dtype)
    hint = "tis is set: the loop fills it for a part with needs_rollout_logprobs (the engine's log-probs)"
    roll = batch.require("rollout_logprobs", hint).to(dtype)
    d = zero_masked(old - roll, mask)  # [N, T]
    if cfg.tis == "sequence":
        d = d.sum(-1, keepdim=True).expand_as(d)  # [N, T]: log of the product of token weights
    elif cfg.tis == "geometric":
        n = mask.sum(-1, keepdim=True).clamp_min(1.0)
        d = (d.sum(-1, keepdim=True) / n).expand_as(d)  # [N, T]: log of their geometric mean
    w = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    over = w > cfg.tis_cap
    under = w < cfg.tis_floor if cfg.tis_floor is not None else torch.zeros_like(over)
    metrics = {
        "tis/weight_mean": float(masked_mean(w, mask)),
        "tis/capped_frac": float(masked_mean(over.to(dtype), mask)),
    }
    if cfg.tis_floor is not None:
        metrics["tis/floored_frac"] = float(masked_mean(under.to(dtype), mask))
    if cfg.tis_mode == "truncate":
        w = w.clamp(min=cfg.tis_floor, max=cfg.tis_cap)
    else:
        w = torch.where(over | under, torch.zeros_like(w), w)
    return w, metrics


@torch.no_grad()
def ratio_metrics(log_r: Tensor, mask: Tensor) -> dict[str, float]:
    """Diagnostics of the ratio ``r = exp(log_r)`` over the response tokens.

    ``policy/approx_kl`` is ``mean(r - 1 - log r)``, the k3 estimate of KL(pi_old || pi) on tokens
    sampled from pi_old (J. Schulman, http://joschu.net/blog/kl-approx.html; cleanrl's approx_kl).
    """
    on = mask != 0
    r = log_r.exp()
    if not bool(on.any()):
        return {"policy/ratio_mean": 1.0, "policy/ratio_max": 1.0, "policy/ratio_min": 1.0, "policy/approx_kl": 0.0}
    return {
        "policy/ratio_mean": float(masked_mean(r, mask)),
        "policy/ratio_max": float(r[on].max()),
        "policy/ratio_min": float(r[on].min()),
        "policy/approx_kl": float(masked_mean(r - 1 - log_r, mask)),
    }


def finish(
    loss_mat: Tensor,
    mask: Tensor,
    batch: RolloutBatch,
    cfg: PolicyLossConfig,
    metrics: dict[str, float],
    weights: Tensor | None = None,
    reductions: dict | None = None,
) -> LossOutput:
    """Apply the TIS weights, aggregate the [N, T] loss with the mini-batch scale, add metrics.

    ``policy/loss`` is a partial sum over the mini-batch's global counts (summed over micro-batches);
    ``reductions`` names how other metrics combine when they are not token means (``LossOutput``).
    """
    if weights is not None:
        loss_mat = loss_mat * weights
    loss = aggregate(loss_mat, mask, cfg.aggregation, batch.scale(), cfg.norm_length)
    metrics["policy/loss"] = float(loss.detach())
    return LossOutput(loss=loss, metrics=metrics, reductions={"policy/loss": "sum", **(reductions or {})})
