"""Critic losses (kind ``value_loss``): ``fn(values [N, T] with grad, batch, cfg) -> LossOutput``.

``values`` are the critic's current predictions for the response tokens; ``batch.values`` holds the
predictions made at rollout time (the clipping anchor) and ``batch.returns`` the value targets,
which the ``gae`` advantage part fills.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.losses.common import VALUE_LOSSES
from anypo.ops import AGGREGATIONS, Aggregation, aggregate, masked_mean, zero_masked
from anypo.types import LossOutput, PartConfig, RolloutBatch

__all__ = ["ClippedValueLoss", "clipped"]


@dataclass(frozen=True)
class ClippedValueLoss(PartConfig):
    """PPO's clipped value loss.

    ``L_t = 0.5 * max((V_t - R_t)^2, (clip(V_t, V_old_t - c, V_old_t + c) - R_t)^2)``, aggregated.
    Source: the OpenAI baselines PPO2 value clipping described in "Implementation Matters in Deep
    Policy Gradients", https://arxiv.org/abs/2005.12729, Sec. 3 ("value function clipping"); verl
    ``compute_value_loss`` (``cliprange_value=0.5``, token-mean). ``coef`` scales the loss (use e.g.
    0.5 or 0.1 when the value head shares the policy's optimizer step).
    """

    cliprange: float = 0.5
    """c: how far the new value may move from the rollout-time value before clipping."""
    coef: float = 1.0
    """Multiplies the loss."""
    aggregation: Aggregation = "token_mean"
    """Aggregation over response tokens (see ops.aggregate)."""
    norm_length: float | None = None
    """Constant length of seq_mean_token_sum_norm; None: the mini-batch's padded T."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.cliprange <= 0:
            raise ValueError(f"cliprange must be positive, got {self.cliprange}")

    @property
    def needs_values(self) -> bool:
        return True


@VALUE_LOSSES.register("clipped", config=ClippedValueLoss)
def clipped(values: Tensor, batch: RolloutBatch, cfg: ClippedValueLoss) -> LossOutput:
    """Clipped value loss: ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``.

    Args:
        values: [N, T] current critic predictions (with grad).
        batch: ``values`` [N, T] (rollout-time predictions), ``returns`` [N, T], ``response_mask``.
        cfg: clip range, coefficient, aggregation.

    Returns:
        0-d loss (dtype of ``values``) and ``value/loss``, ``value/clipfrac``, ``value/pred_mean``,
        ``value/error`` (mean squared error to the returns).
    """
    mask = batch.response_mask.to(values.dtype)
    if values.shape != mask.shape:
        raise ValueError(f"values has shape {tuple(values.shape)}, response_mask {tuple(mask.shape)}")
    values = zero_masked(values, mask)
    old = zero_masked(batch.require("values", "the critic's rollout-time values (needs_values)").to(values.dtype), mask)
    ret = zero_masked(
        batch.require("returns", "use an advantage part that fills returns, e.g. gae").to(values.dtype), mask
    )
    v_clip = old + (values - old).clamp(-cfg.cliprange, cfg.cliprange)
    err = (values - ret).square()
    err_clip = (v_clip - ret).square()
    loss_mat = 0.5 * torch.maximum(err, err_clip)  # [N, T]
    loss = cfg.coef * aggregate(loss_mat, mask, cfg.aggregation, batch.scale(), cfg.norm_length)
    with torch.no_grad():
        metrics = {
            "value/loss": float(loss),
            "value/clipfrac": float(masked_mean((err_clip > err).to(values.dtype), mask)),
            "value/pred_mean": float(masked_mean(values, mask)),
            "value/error": float(masked_mean(err, mask)),
        }
    return LossOutput(loss=loss, metrics=metrics, reductions={"value/loss": "sum"})
