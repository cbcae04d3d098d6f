"""Outcome-reward advantage estimators with a group baseline: GRPO, Dr. GRPO, RLOO, REINFORCE++-baseline.

Each maps the sequence rewards ``R [N]`` of ``B`` prompt groups to one advantage per sequence and
broadcasts it over the response mask: ``A [N, T] = A_i * m_it``. The sequence reward is
``rewards + sum_t m * token_rewards`` (the second term only when ``token_rewards`` is set).
Group ids may be any integers; a group of one sample gets advantage 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.ops import group_reduce, group_stats, masked_sum, masked_whiten
from anypo.registry import REGISTRIES
from anypo.types import PartConfig, RolloutBatch

ADVANTAGES = REGISTRIES["advantage"]

__all__ = [
    "DrGRPOAdvantage",
    "GRPOAdvantage",
    "GroupRelativeConfig",
    "RLOOAdvantage",
    "ReinforcePPBaselineAdvantage",
    "broadcast",
    "dr_grpo",
    "grpo",
    "reinforce_pp_baseline",
    "rloo",
    "sequence_rewards",
]


def sequence_rewards(batch: RolloutBatch) -> Tensor:
    """[N] outcome reward plus the masked sum of ``token_rewards`` when present."""
    R = batch.rewards
    if batch.token_rewards is not None:
        R = R + masked_sum(batch.token_rewards.to(R.dtype), batch.response_mask, dim=-1)
    return R


def correctness_or_reward(batch: RolloutBatch) -> Tensor:
    """[N] the task's correctness (``extras["correct"]``) when the batch has it, else the sequence reward.

    For estimators defined on 0/1 verifier outcomes (BNPO's success rates, RiskPO's quantiles): the
    built-in tasks' total reward adds a 0.1 format term to the correctness, which moves rates out of
    [0, 1] and gives a group of all-wrong answers a reward spread of 0.1.
    """
    correct = batch.extras.get("correct")
    if correct is not None and len(correct) == batch.num_seqs:
        return torch.tensor([float(c) for c in correct], dtype=batch.rewards.dtype, device=batch.rewards.device)
    return sequence_rewards(batch)


def broadcast(a: Tensor, batch: RolloutBatch) -> Tensor:
    """[N] sequence advantages -> [N, T] on the response tokens, 0 elsewhere."""
    return a.unsqueeze(-1) * batch.mask


@dataclass(frozen=True)
class GroupRelativeConfig(PartConfig):
    """Base of advantages that compare the samples of one prompt: a group needs at least 2 samples."""

    @property
    def group_relative(self) -> bool:
        return True


@dataclass(frozen=True)
class GRPOAdvantage(GroupRelativeConfig):
    """Group-relative z-score advantage of GRPO.

    Paper: "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    https://arxiv.org/abs/2402.03300, Sec. 4.1.2 (outcome supervision):
    ``A_i = (R_i - mean_g(R)) / std_g(R)``. As verl/TRL we use the unbiased std and add ``eps``.
    ``scale="batch"`` divides by the std of all rewards of the batch instead (TRL's
    ``scale_rewards="batch"``, "Lite PPO"); ``scale="none"`` gives Dr. GRPO's advantage.
    """

    scale: Literal["group", "batch", "none"] = "group"
    """Divide the centred reward by the group std (GRPO), the batch std, or nothing."""
    eps: float = 1e-6
    """Added to the std before dividing."""

    def __post_init__(self) -> None:
        if self.scale not in ("group", "batch", "none"):
            raise ValueError(f"GRPOAdvantage.scale must be 'group', 'batch' or 'none', got {self.scale!r}")


@ADVANTAGES.register("grpo", config=GRPOAdvantage)
def grpo(batch: RolloutBatch, cfg: GRPOAdvantage) -> Tensor:
    """GRPO advantage: ``A_i = (R_i - mean_g R) / (std_g R + eps)``, broadcast over the mask.

    std is unbiased (``n_g - 1``); a single-sample group has ``R_i - mean = 0`` hence ``A_i = 0``.

    Args:
        batch: needs ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``.
        cfg: the std scaling and epsilon.

    Returns:
        [N, T] advantages in the dtype of ``rewards``.
    """
    R = sequence_rewards(batch)  # [N]
    mean, std, _ = group_stats(R, batch.group_ids)  # [N] each
    centred = R - mean
    if cfg.scale == "group":
        A = centred / (std + cfg.eps)
    elif cfg.scale == "batch":
        batch_std = R.std() if R.numel() > 1 else R.new_zeros(())
        A = centred / (batch_std + cfg.eps)
    else:
        A = centred
    return broadcast(A, batch)


@dataclass(frozen=True)
class DrGRPOAdvantage(GroupRelativeConfig):
    """Dr. GRPO advantage: the group-centred reward without std division.

    Paper: "Understanding R1-Zero-Like Training: A Critical Perspective",
    https://arxiv.org/abs/2503.20783, Sec. 3.2 (Dr. GRPO removes the ``1/std(R)`` question-level
    difficulty bias): ``A_i = R_i - mean_g(R)``. No deviation.
    """


@ADVANTAGES.register("dr_grpo", config=DrGRPOAdvantage)
def dr_grpo(batch: RolloutBatch, cfg: DrGRPOAdvantage) -> Tensor:
    """Dr. GRPO advantage: ``A_i = R_i - mean_g R``, broadcast over the mask.

    Args:
        batch: needs ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``.
        cfg: no fields.

    Returns:
        [N, T] advantages in the dtype of ``rewards``.
    """
    R = sequence_rewards(batch)  # [N]
    mean, _, _ = group_stats(R, batch.group_ids)
    return broadcast(R - mean, batch)


@dataclass(frozen=True)
class RLOOAdvantage(GroupRelativeConfig):
    """REINFORCE Leave-One-Out baseline.

    Paper: "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs", https://arxiv.org/abs/2402.14740, Sec. 3.2 (RLOO estimator):
    ``A_i = R_i - 1/(G-1) sum_{j != i} R_j = G/(G-1) (R_i - mean_g R)``. A group of one sample gets
    0 (the paper assumes G >= 2).
    """


@ADVANTAGES.register("rloo", config=RLOOAdvantage)
def rloo(batch: RolloutBatch, cfg: RLOOAdvantage) -> Tensor:
    """RLOO advantage: ``A_i = R_i - (sum_g R - R_i) / (n_g - 1)``, broadcast over the mask.

    Args:
        batch: needs ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``.
        cfg: no fields.

    Returns:
        [N, T] advantages in the dtype of ``rewards``; 0 for single-sample groups.
    """
    R = sequence_rewards(batch)  # [N]
    total = group_reduce(R, batch.group_ids, "sum")  # [N]
    _, _, count = group_stats(R, batch.group_ids)  # [N]
    loo_mean = (total - R) / (count - 1).clamp_min(1)
    A = (R - loo_mean) * (count > 1).to(R.dtype)
    return broadcast(A, batch)


@dataclass(frozen=True)
class ReinforcePPBaselineAdvantage(GroupRelativeConfig):
    """REINFORCE++-baseline: group-centred reward, then whitening over all tokens of the batch.

    Paper: "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
    (later versions: "...Stabilizing Critic-Free Policy Optimization with Global Advantage
    Normalization"), https://arxiv.org/abs/2501.03262, the REINFORCE++-baseline variant:
    ``A_i = R_i - mean_g R``, broadcast to tokens, then ``(A - mu) / sqrt(var + eps)`` with the
    mean and unbiased variance over every response token of the batch (verl
    ``compute_reinforce_plus_plus_baseline_outcome_advantage``). The KL to the reference is left to
    a ``kl`` regularizer (loss), as in verl's recipe.
    """

    eps: float = 1e-8
    """Added to the variance of the global whitening."""


@ADVANTAGES.register("reinforce_pp_baseline", config=ReinforcePPBaselineAdvantage)
def reinforce_pp_baseline(batch: RolloutBatch, cfg: ReinforcePPBaselineAdvantage) -> Tensor:
    """REINFORCE++-baseline: ``whiten_batch((R_i - mean_g R) * m_it) * m_it``.

    Args:
        batch: needs ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``.
        cfg: whitening epsilon.

    Returns:
        [N, T] advantages in the dtype of ``rewards``.
    """
    R = sequence_rewards(batch)  # [N]
    mean, _, _ = group_stats(R, batch.group_ids)
    A = broadcast(R - mean, batch)  # [N, T]
    mask = batch.mask
    return masked_whiten(A, mask, unbiased=True, eps=cfg.eps) * mask
