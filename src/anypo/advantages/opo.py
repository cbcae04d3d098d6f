"""OPO: the group baseline weighted by response length (the variance-optimal baseline).

The baseline that minimises the variance of ``(R - b) grad log pi(y)`` is
``b* = E[||grad log pi(y)||^2 R] / E[||grad log pi(y)||^2]``. OPO approximates the squared norm of
a response's score by its length (a sum of ``|y|`` roughly independent token scores), so each
group's baseline is its length-weighted mean reward, and the standard deviation is not divided.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast, sequence_rewards
from anypo.types import RolloutBatch

__all__ = ["OPOAdvantage", "opo"]


@dataclass(frozen=True)
class OPOAdvantage(GroupRelativeConfig):
    """On-Policy RL with Optimal reward baseline: ``A_i = R_i - sum_g |o_j| R_j / sum_g |o_j|``.

    Paper: Y. Hao, L. Dong, X. Wu, S. Huang, Z. Chi, F. Wei, "On-Policy RL with Optimal Reward
    Baseline", https://arxiv.org/abs/2505.23585 (the optimal baseline
    ``b* = E[||grad log pi||^2 R] / E[||grad log pi||^2]`` with ``||grad log pi(y)||^2`` taken
    proportional to the length ``|y|``; equation numbers not verified: the method section could
    not be read). Verified against the official code, github.com/microsoft/LMOps
    ``opo/verl/trainer/ppo/core_algos.py`` (``bsl_score = sum(len * score) / sum(len)``), its README
    (exact on-policy: mini-batch = rollout batch, no KL, no entropy bonus) and verl
    ``compute_opo_outcome_advantage`` / ``docs/algo/opo.md``. No std division.

    Deviations: (1) a group of one sample gets advantage 0 (verl gives it the baseline 0, i.e.
    ``A = R``), the convention of every group-relative part here; (2) a group whose responses are
    all empty has no length weights and takes the plain mean as baseline (its advantages are then
    masked out anyway).

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]`` -> ``[N, T]``.
    """


@ADVANTAGES.register("opo", config=OPOAdvantage)
def opo(batch: RolloutBatch, cfg: OPOAdvantage) -> Tensor:
    """OPO: ``A_i = R_i - b_g``, ``b_g = sum_{j in g} |o_j| R_j / sum_{j in g} |o_j|``, broadcast.

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``.
        cfg: no fields.

    Returns:
        [N, T] advantages in the dtype of ``rewards``; 0 for groups of one sample.
    """
    R = sequence_rewards(batch)  # [N]
    length = batch.mask.sum(-1)  # [N] |o_i|
    _, inv = torch.unique(batch.group_ids, return_inverse=True)  # [N] dense ids 0..K-1
    K = int(inv.max()) + 1 if inv.numel() else 0
    count = R.new_zeros(K).index_add_(0, inv, torch.ones_like(R))  # [K] G_q
    total_len = R.new_zeros(K).index_add_(0, inv, length)  # [K]
    weighted = R.new_zeros(K).index_add_(0, inv, length * R)  # [K]
    mean = R.new_zeros(K).index_add_(0, inv, R) / count.clamp_min(1.0)  # [K] fallback for all-empty groups
    baseline = torch.where(total_len > 0, weighted / total_len.clamp_min(1.0), mean)  # [K]
    A = (R - baseline[inv]) * (count[inv] > 1).to(R.dtype)
    return broadcast(A, batch)
