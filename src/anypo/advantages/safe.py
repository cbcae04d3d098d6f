"""SAFE's sequence advantage: running-normalised reward minus the critic's sequence value, standardised."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, broadcast, sequence_rewards
from anypo.losses.critic import sequence_value
from anypo.types import PartConfig, RolloutBatch

__all__ = ["SAFEAdvantage", "normalizer_update", "safe"]


def normalizer_update(state: dict[str, Any], x: Tensor) -> None:
    """SAFE's ``RewardNormalizer.update`` (parallel mean / variance merge) on the batch ``x`` [N], in place.

    ``count`` starts at 1e-4, ``mean`` 0, ``var`` 1; the batch variance is unbiased (0 for one value):
    ``delta = mean_b - mean``, ``tot = count + n``, ``mean += delta n / tot``,
    ``var = (var count + var_b n + delta^2 count n / tot) / tot``, ``count = tot``.
    """
    n = int(x.numel())
    if n == 0:
        return
    count, mean, var = float(state["count"]), float(state["mean"]), float(state["var"])
    b_mean = float(x.mean())
    b_var = float(x.var()) if n > 1 else 0.0
    delta = b_mean - mean
    tot = count + n
    state["mean"] = mean + delta * n / tot
    state["var"] = (var * count + b_var * n + delta**2 * count * n / tot) / tot
    state["count"] = tot


@dataclass(frozen=True)
class SAFEAdvantage(PartConfig):
    """SAFE's advantage: ``A = R^ - V`` per sequence, standardised over the batch; fills ``returns = R^``.

    Paper: D. Maity, "SAFE: Stable Alignment Finetuning with Entropy-Aware Predictive Control for
    RLHF", https://arxiv.org/abs/2602.04651; verified against the official code (github.com/ryyzn9/SAFE
    ``notebooks/mainD.py``: ``RewardNormalizer``, ``generate_rollouts``, ``train_step``):

        R^_i = (R_i - mu) / (sqrt(var) + 1e-8)      running mean / variance, updated with this batch first
        A_i  = R^_i - V_i
        A_i <- (A_i - mean_batch A) / (std_batch A + 1e-8)           (unbiased std)

    ``V_i`` is the critic's sequence value (``batch.values`` at ``value_position``): with the ``safe``
    preset's critic (:class:`anypo.policy.CriticConfig`: two soft-min heads valuing the state after
    each token) the last response token's value, i.e. the soft-min of the two heads on the whole
    sequence, as the code's ``critic.soft_min(*critic(h))``; see :class:`anypo.losses.SAFEValueLoss`. The normaliser's ``count / mean / var`` are the part's state (``stateful``, in
    checkpoints). ``batch.returns`` is ``R^`` broadcast over the response (the value target).

    Shapes: ``rewards`` [N], ``values`` and ``response_mask`` [N, T] -> advantages [N, T].
    """

    value_position: Literal["last", "first"] = "last"
    """Which response position's value is the sequence's (as the value loss's)."""
    normalize_reward: bool = True
    """Running reward normalisation (SAFE's RewardNormalizer); False: R^ = R."""
    eps: float = 1e-8
    """Added to the std of the normaliser and of the batch standardisation."""

    def __post_init__(self) -> None:
        if self.value_position not in ("last", "first"):
            raise ValueError(f"SAFEAdvantage.value_position must be 'last' or 'first', got {self.value_position!r}")

    @property
    def needs_values(self) -> bool:
        return True

    @property
    def stateful(self) -> bool:
        """The running reward normaliser persists across steps."""
        return self.normalize_reward

    def init_state(self) -> dict[str, Any]:
        return {"count": 1e-4, "mean": 0.0, "var": 1.0}


@ADVANTAGES.register("safe", config=SAFEAdvantage)
def safe(batch: RolloutBatch, cfg: SAFEAdvantage) -> Tensor:
    """SAFE: standardised ``R^ - V``; updates the normaliser in ``batch.part_state``; sets ``batch.returns``.

    Args:
        batch: ``rewards`` [N], ``values`` and ``response_mask`` [N, T]; ``part_state`` (the
            normaliser; None: a fresh one, not kept).
        cfg: value position, normalisation, epsilon.

    Returns:
        [N, T] advantages; logs ``safe_reward_norm_mean`` (mean of R^) and ``safe_value_mean``.
    """
    R = sequence_rewards(batch)  # [N]
    mask = batch.mask
    values = batch.require("values", "SAFE needs a critic: the loop runs it when needs_values").detach()
    values = torch.where(mask != 0, values.to(R.dtype), torch.zeros_like(mask))
    V, has = sequence_value(values, mask, cfg.value_position)  # [N]
    if cfg.normalize_reward:
        state = batch.part_state if batch.part_state is not None else cfg.init_state()
        normalizer_update(state, R)
        R_hat = (R - float(state["mean"])) / (math.sqrt(float(state["var"])) + cfg.eps)
    else:
        R_hat = R
    A = torch.where(has, R_hat - V, torch.zeros_like(R))
    if int(has.sum()) > 1:
        a = A[has]
        A = torch.where(has, (A - a.mean()) / (a.std() + cfg.eps), torch.zeros_like(A))
    batch.returns = broadcast(R_hat, batch)
    batch.add_metric("safe_reward_norm_mean", R_hat.mean() if len(R) else 0.0)
    batch.add_metric("safe_value_mean", V[has].mean() if bool(has.any()) else 0.0)
    return broadcast(A, batch)
