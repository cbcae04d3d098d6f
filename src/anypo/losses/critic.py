"""Critic losses of T-PPO (completed responses only) and SAFE (Huber, one value per sequence), and
SAFE's soft-min of two value heads (the critic itself combines its heads: ``anypo.policy.CriticConfig``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.losses.common import VALUE_LOSSES
from anypo.losses.value import ClippedValueLoss, clipped
from anypo.ops import AGGREGATIONS, Aggregation, aggregate, last_token_index, zero_masked
from anypo.types import LossOutput, PartConfig, RolloutBatch

__all__ = ["SAFEValueLoss", "TPPOValueLoss", "safe_value", "sequence_value", "soft_min", "tppo_value"]


@dataclass(frozen=True)
class TPPOValueLoss(ClippedValueLoss):
    """PPO's clipped value loss on the completed responses only (T-PPO's token filtering; reconstructed).

    Paper: "Truncated Proximal Policy Optimization", https://arxiv.org/abs/2506.15050 (abstract: the
    policy and value models are optimised independently, "selectively filtering prompt and truncated
    tokens"). Reconstruction (UNVERIFIED): the value model trains on the tokens of finished responses,
    whose targets rest on a real reward; an unfinished response's bootstrapped targets are left out
    (``extras["unfinished"]``, and ``batch.truncated`` too with ``truncated_unfinished``, as
    :class:`anypo.advantages.EGAEAdvantage`). The loss is that of ``clipped`` with those rows' tokens
    masked, still normalised by the mini-batch's global counts (so micro-batches sum exactly).
    ``skip_unfinished=False`` is ``clipped``.

    Shapes: ``values`` [N, T] (with grad), ``batch.values`` / ``returns`` / ``response_mask`` [N, T],
    ``truncated`` [N] -> 0-d loss.
    """

    skip_unfinished: bool = True
    """Leave the tokens of unfinished responses out of the value loss."""
    truncated_unfinished: bool = False
    """Count responses cut by max_new_tokens (batch.truncated) as unfinished (as the egae advantage's)."""


@VALUE_LOSSES.register("tppo_value", config=TPPOValueLoss)
def tppo_value(values: Tensor, batch: RolloutBatch, cfg: TPPOValueLoss) -> LossOutput:
    """``clipped`` on the finished rows (``anypo.advantages.egae.unfinished_rows`` left out).

    Returns:
        0-d loss and the ``clipped`` metrics, plus ``value/trained_frac`` (share of the response
        tokens in the loss).
    """
    from anypo.advantages.egae import unfinished_rows  # (advantages import this module: import here)

    keep = batch.response_mask
    if cfg.skip_unfinished:
        keep = keep * (~unfinished_rows(batch, cfg.truncated_unfinished)).to(keep.dtype)[:, None]
    sub = dataclasses.replace(batch, response_mask=keep, loss_scale=batch.scale())
    out = clipped(values, sub, cfg)
    n = float(batch.response_mask.sum())
    out.metrics["value/trained_frac"] = float(keep.sum()) / n if n else 0.0
    return out


def soft_min(v1: Tensor, v2: Tensor, alpha: float) -> Tensor:
    """SAFE's double soft-min critic: ``-alpha log((exp(-v1 / alpha) + exp(-v2 / alpha)) / 2)``.

    Tends to ``min(v1, v2)`` as alpha -> 0 and to their mean as alpha -> infinity (pessimistic value).
    """
    s = torch.stack([-v1 / alpha, -v2 / alpha], dim=-1)
    return -alpha * (torch.logsumexp(s, dim=-1) - math.log(2.0))


def sequence_value(x: Tensor, mask: Tensor, position: str) -> tuple[Tensor, Tensor]:
    """([N] the entry of ``x`` [N, T] at each row's value position, [N] bool: the row has a response).

    ``position="last"``: the last response token's column (``V(s_{l-1})``, the state with all but the
    last token, from a critic valuing the state before each token; ``V(s_l)``, the whole sequence, from
    one valuing the state after it: ``CriticConfig.state``); ``"first"``: column 0 (``V(s_0)``, the
    prompt's state, with ``state="before"``).
    """
    last = last_token_index(mask)  # [N], -1 for an empty response
    has = last >= 0
    col = last.clamp_min(0) if position == "last" else torch.zeros_like(last)
    return x.gather(1, col[:, None]).squeeze(1), has


@dataclass(frozen=True)
class SAFEValueLoss(PartConfig):
    """SAFE's critic loss: the mean of two Huber losses (plain and clipped value) per sequence.

    Paper: D. Maity, "SAFE: Stable Alignment Finetuning with Entropy-Aware Predictive Control for
    RLHF", https://arxiv.org/abs/2602.04651; verified against the official code
    (github.com/ryyzn9/SAFE ``notebooks/mainD.py``, ``S3KLQTrainerD.train_step``):

        V_clip = V_old + clip(V - V_old, -c, c)
        L      = coef * 0.5 * mean_i [ Huber_d(V_i, R^_i) + Huber_d(V_clip_i, R^_i) ]

    with ``R^`` the running-normalised reward (``batch.returns``, filled by the ``safe`` advantage),
    ``c = 0.2``, ``d = 0.5``, ``coef = 0.5`` (the code's ``0.5 * v_loss`` in the total loss).

    The critic: SAFE's two heads (LayerNorm -> Linear(h, h/4) -> GELU -> Linear(h/4, 1)) on the last
    hidden state, combined by :func:`soft_min` (alpha 0.3), are the loop's critic built from
    ``AlgoConfig.critic`` (:class:`anypo.policy.CriticConfig`, as the ``safe`` preset sets it), so
    ``values`` here is already the soft-min and this loss trains both heads through it. With
    ``CriticConfig(state="after")`` the value at the last response token is that of the whole sequence
    (SAFE's last-position hidden state); ``value_position`` picks that column ("last"). Deviations: the
    heads sit on a copy of the policy's trunk with its own optimizer (the code's heads read the policy's
    own hidden states, so its value loss also trains the policy's LoRA weights); no Polyak target
    critic (the code keeps one but its loss never reads it); the code's separate critic gradient clip
    0.5 is the loop's ``max_grad_norm``.

    Shapes: ``values`` [N, T] (with grad), ``batch.values`` / ``returns`` / ``response_mask`` [N, T]
    -> 0-d loss.
    """

    cliprange: float = 0.2
    """c: how far a value may move from its rollout-time value before clipping (clip_range_vf)."""
    huber_delta: float = 0.5
    """d: the Huber loss's quadratic-to-linear threshold."""
    coef: float = 0.5
    """Multiplies the loss (the code's 0.5 * v_loss)."""
    value_position: Literal["last", "first"] = "last"
    """Which response position's value is the sequence's (see the class docstring)."""
    aggregation: Aggregation = "seq_mean_token_sum"
    """The per-sequence loss sits on its value position's token; seq_mean_token_sum is SAFE's mean over sequences."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"SAFEValueLoss.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if not self.cliprange > 0 or not self.huber_delta > 0:
            raise ValueError(
                f"SAFEValueLoss.cliprange and huber_delta must be positive, got {self.cliprange}, {self.huber_delta}"
            )
        if self.value_position not in ("last", "first"):
            raise ValueError(f"SAFEValueLoss.value_position must be 'last' or 'first', got {self.value_position!r}")

    @property
    def needs_values(self) -> bool:
        return True


def _huber(x: Tensor, d: float) -> Tensor:
    a = x.abs()
    return torch.where(a <= d, 0.5 * x.square(), d * (a - 0.5 * d))


@VALUE_LOSSES.register("safe_value", config=SAFEValueLoss)
def safe_value(values: Tensor, batch: RolloutBatch, cfg: SAFEValueLoss) -> LossOutput:
    """``coef * 0.5 * sum_i [Huber(V_i - R^_i) + Huber(V_clip_i - R^_i)] / N_seq`` (default aggregation).

    Args:
        values: [N, T] current critic values (with grad).
        batch: ``values`` (rollout-time), ``returns`` (``R^`` broadcast over the mask), ``response_mask``.
        cfg: clip range, Huber threshold, coefficient, value position.

    Returns:
        0-d loss (by default normalised by the mini-batch's sequence count) and ``value/loss``,
        ``value/clipfrac``, ``value/pred_mean``, ``value/error``.
    """
    mask = batch.response_mask.to(values.dtype)
    v_all = zero_masked(values, mask)
    old_all = zero_masked(
        batch.require("values", "the critic's rollout-time values (needs_values)").to(values.dtype), mask
    )
    ret_all = zero_masked(
        batch.require("returns", "use the safe advantage, which fills returns").to(values.dtype), mask
    )
    v, has = sequence_value(v_all, mask, cfg.value_position)
    old, _ = sequence_value(old_all, mask, cfg.value_position)
    ret, _ = sequence_value(ret_all, mask, cfg.value_position)
    v_clip = old + (v - old).clamp(-cfg.cliprange, cfg.cliprange)
    per = 0.5 * (_huber(v - ret, cfg.huber_delta) + _huber(v_clip - ret, cfg.huber_delta))  # [N]
    per = torch.where(has, per, torch.zeros_like(per))
    # the per-sequence loss on the value position's token: seq_mean_token_sum gives sum_i per_i / N_seq
    col = (
        last_token_index(mask).clamp_min(0) if cfg.value_position == "last" else torch.zeros_like(has, dtype=torch.long)
    )
    at = torch.nn.functional.one_hot(col, mask.shape[-1]).to(values.dtype) * has[:, None].to(values.dtype)  # [N, T]
    loss = cfg.coef * aggregate(at * per[:, None], mask, cfg.aggregation, batch.scale())
    n = max(int(has.sum()), 1)
    with torch.no_grad():
        metrics = {
            "value/loss": float(loss),
            "value/clipfrac": float(((v - old).abs() > cfg.cliprange)[has].sum()) / n,
            "value/pred_mean": float(v[has].sum()) / n,
            "value/error": float((v - ret).square()[has].sum()) / n,
        }
    return LossOutput(
        loss=loss,
        metrics=metrics,
        reductions={
            "value/loss": "sum",
            "value/clipfrac": "seq_mean",
            "value/pred_mean": "seq_mean",
            "value/error": "seq_mean",
        },
    )
