"""MaxRL: the group-centred reward divided by the group mean instead of the group std.

With binary rewards, ``log p = -sum_k (1 - p)^k / k`` (``p`` the pass rate of a prompt), so the
maximum-likelihood gradient ``grad log p`` is a harmonic mixture of ``grad pass@k``; RL's expected
reward keeps only the ``k = 1`` term. The estimator that averages ``grad log pi(y)`` over the
*correct* samples of a group is unbiased for the truncation of that series at the group size, and
with the group mean as control variate it is the advantage ``(R_i - mean) / mean``: a prompt
solved by 1 of 16 samples gets 16 times the weight of one always solved (``~1 / p``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast, sequence_rewards
from anypo.ops import group_stats
from anypo.types import RolloutBatch

__all__ = ["MaxRLAdvantage", "maxrl"]


@dataclass(frozen=True)
class MaxRLAdvantage(GroupRelativeConfig):
    """Maximum Likelihood RL advantage: ``A_i = (R_i - mean_g R) / (mean_g R + eps)``.

    Paper: F. Tajwar, G. Zeng, Y. Zhou, Y. Song, D. Arora, Y. Jiang, J. Schneider,
    R. Salakhutdinov, H. Feng, A. Zanette, "Maximum Likelihood Reinforcement Learning",
    https://arxiv.org/abs/2602.02710 (the Maclaurin expansion ``log p = -sum_k fail@k / k`` and its
    unbiased estimator: the mean score function over successful samples; equation numbers not
    verified: the method section could not be read; project page zanette-labs.github.io/MaxRL).
    Verified against the official code, github.com/tajwarfahim/maxrl
    ``verl/trainer/ppo/core_algos.py::compute_maxrl_outcome_advantage`` (``eps = 1e-6``), SkyRL
    ``compute_maxrl_advantage`` and prime-rl ``orchestrator/algo/max_rl.py``.

    Designed for non-negative (canonically binary) rewards. Deviations: (1) a group whose mean
    reward is ``<= 0`` (every sample failed) gets advantage 0, as prime-rl (the official code gives
    ``0 / eps = 0`` for all-zero groups too, but divides by a negative mean when rewards are
    negative); (2) a group of one sample gets 0 (the official code divides its reward by ``eps``).

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]`` -> ``[N, T]``.
    """

    eps: float = 1e-6
    """Added to the group mean before dividing (official code: 1e-6)."""

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"MaxRLAdvantage.eps must be >= 0, got {self.eps}")


@ADVANTAGES.register("maxrl", config=MaxRLAdvantage)
def maxrl(batch: RolloutBatch, cfg: MaxRLAdvantage) -> Tensor:
    """MaxRL: ``A_i = (R_i - mean_g R) / (mean_g R + eps)``; 0 where ``mean_g R <= 0``; broadcast.

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``.
        cfg: epsilon.

    Returns:
        [N, T] advantages in the dtype of ``rewards``; 0 for groups of one sample.
    """
    R = sequence_rewards(batch)  # [N]
    mean, _, count = group_stats(R, batch.group_ids)  # [N] each
    ok = (mean > 0) & (count > 1)
    safe = torch.where(ok, mean + cfg.eps, torch.ones_like(mean))  # [N] no division by <= 0
    A = torch.where(ok, (R - mean) / safe, torch.zeros_like(R))
    return broadcast(A, batch)
