"""What every policy loss shares: the config base (aggregation, truncated importance sampling),
input checks, the importance weights of the rollout/training mismatch, and ratio diagnostics.

Truncated importance sampling (TIS). A rollout engine (vLLM, SGLang) and the learner (FSDP) compute
slightly different probabilities for the same policy, so the data are mildly off-policy even at the
first update. With ``old_logprobs`` recomputed by the learner and ``rollout_logprobs`` reported by
the engine, the correction weight is ``w = pi_old / pi_rollout = exp(old - rollout)``:

* ``tis="token"``: one weight per token; ``tis="sequence"``: ``w_i = exp(sum_t m (old - rollout))``
  shared by every token of sequence ``i``;
* ``tis_mode="truncate"``: ``min(w, tis_cap)`` (TIS); ``"mask"``: ``w * 1[w <= tis_cap]`` (masked
  IS: an over-cap token or sequence is dropped from the loss but still counts in the normaliser,
  which keeps the micro-batch sums exact).

The weight is a constant (stop-gradient) multiplying the per-token loss before aggregation.
Reference: F. Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
(2025 blog, https://fengyao.notion.site/off-policy-rl); no arXiv paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    "log_ratio",
    "policy_inputs",
    "ratio_metrics",
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

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.norm_length is not None and self.norm_length <= 0:
            raise ValueError(f"norm_length must be positive, got {self.norm_length}")


@dataclass(frozen=True)
class RatioLossConfig(PolicyLossConfig):
    """A policy loss with an importance ratio to ``old_logprobs``, plus the TIS option."""

    tis: Literal["token", "sequence"] | None = None
    """Correct the rollout-engine/learner mismatch with exp(old - rollout) weights; None disables."""
    tis_mode: Literal["truncate", "mask"] = "truncate"
    """truncate: min(w, tis_cap); mask: drop tokens (or sequences) with w > tis_cap."""
    tis_cap: float = 2.0
    """Upper bound C of the importance weight."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tis not in (None, "token", "sequence"):
            raise ValueError(f"tis must be None, 'token' or 'sequence', got {self.tis!r}")
        if self.tis_mode not in ("truncate", "mask"):
            raise ValueError(f"tis_mode must be 'truncate' or 'mask', got {self.tis_mode!r}")
        if self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be positive, got {self.tis_cap}")


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
    """Stop-gradient importance weights ``pi_old / pi_rollout`` [N, T] (None when ``cfg.tis`` is None)."""
    if cfg.tis is None:
        return None, {}
    dtype = mask.dtype
    old = batch.require("old_logprobs", "TIS needs the learner's old_logprobs").to(dtype)
    hint = "tis is set: store the rollout engine's per-token log-probs there, or set tis=None"
    roll = batch.require("rollout_logprobs", hint).to(dtype)
    d = zero_masked(old - roll, mask)  # [N, T]
    if cfg.tis == "sequence":
        d = d.sum(-1, keepdim=True).expand_as(d)  # [N, T]: log of the product of token weights
    w = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    over = w > cfg.tis_cap
    metrics = {
        "tis/weight_mean": float(masked_mean(w, mask)),
        "tis/capped_frac": float(masked_mean(over.to(dtype), mask)),
    }
    w = w.clamp(max=cfg.tis_cap) if cfg.tis_mode == "truncate" else torch.where(over, torch.zeros_like(w), w)
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
