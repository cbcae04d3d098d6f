"""GPG: the group-centred reward, scaled up by the share of samples that carry a signal.

A group whose samples all got the same reward has advantage 0 for every sample: in a batch of
``B`` samples of which ``M`` sit in such groups, a token-mean policy-gradient loss is averaged over
all ``B`` samples but only ``B - M`` of them contribute, which shrinks the gradient by
``(B - M) / B``. GPG multiplies the advantages by ``alpha = B / (B - M)`` to undo it. The factor
is a statistic of the whole rollout batch, which the advantage part sees (the loss sees one
micro-batch): it is computed here, once per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast, sequence_rewards
from anypo.ops import group_reduce, group_stats
from anypo.types import RolloutBatch

__all__ = ["GPGAdvantage", "gpg", "gpg_alpha"]


@dataclass(frozen=True)
class GPGAdvantage(GroupRelativeConfig):
    """Group Policy Gradient advantage: ``A_i = alpha (R_i - mean_g R) / F_norm``.

    Paper: X. Chu, H. Huang, X. Zhang, F. Wei, Y. Wang, "GPG: A Simple and Strong Reinforcement
    Learning Baseline for Model Reasoning", https://arxiv.org/abs/2504.02546, Sec. 3 (the corrected
    advantage ``A = alpha (R - mean(R)) / F_norm`` with ``alpha = B / (B - M)``; equation numbers
    not verified: the method section could not be read). Verified against the official code,
    github.com/AMAP-ML/GPG ``open-r1/src/open_r1/gpg_trainer.py`` (``scale_rewards=False`` gives
    ``F_norm = 1``; ``adjust_gd`` divides the loss by ``inverse_alpha = (B - M) / B``) and
    ``open-r1/train.sh``, and verl ``compute_gpg_outcome_advantage``:

    * ``A_i = R_i - mean_g(R)`` (``F_norm = 1``, the paper's best setting; ``std_normalize=True``
      divides by the group std + 1e-4, the code's ``scale_rewards``);
    * ``alpha = B / (B - M)`` with ``B`` the samples of the rollout batch and ``M`` those in groups
      whose rewards are all equal (their advantage is 0); ``alpha = 1`` when no group has a signal.

    The paper pairs it with the plain policy gradient ``L = -A lp`` (no ratio, no clipping, no
    KL), token-mean over the batch: the ``reinforce`` loss with ``aggregation="token_mean"``.

    Deviations: (1) the official trainer also re-generates prompts until at least a share
    ``beta_th`` (``min_inverse_alpha``, 0.5 in ``train.sh``, 0.6 in the paper's table) of the groups
    carry a signal, which bounds ``alpha <= 1 / beta_th``; that is a sampler and is not part of
    this advantage (``alpha`` is unbounded here; ``max_alpha`` can cap it). (2) The code counts
    groups, the paper samples; with groups of equal size the two ratios are equal, and here samples
    are counted. (3) verl's ``compute_gpg_outcome_advantage`` counts the samples with a *non-zero
    reward* as ``B - M``; we follow the paper and the authors' code (non-zero advantage). (4) A
    group of one sample has no baseline: advantage 0, and it counts in ``M``.

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]`` -> ``[N, T]``.
    """

    std_normalize: bool = False
    """Divide the centred reward by the group std + eps (the code's scale_rewards; paper: F_norm = 1)."""
    eps: float = 1e-4
    """Added to the std when std_normalize is set (official code: 1e-4)."""
    max_alpha: float | None = None
    """Upper bound of alpha; None: the paper's B / (B - M) uncapped (the official resampling keeps it <= 2)."""

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"GPGAdvantage.eps must be > 0, got {self.eps}")
        if self.max_alpha is not None and self.max_alpha < 1:
            raise ValueError(f"GPGAdvantage.max_alpha must be >= 1 (or None), got {self.max_alpha}")


def gpg_alpha(R: Tensor, group_ids: Tensor) -> Tensor:
    """0-d ``alpha = B / (B - M)``: samples over samples in groups whose rewards are not all equal.

    Returns 1 when no group carries a signal (every advantage is then 0 anyway).
    """
    gmax = group_reduce(R, group_ids, "amax")  # [N]
    gmin = group_reduce(R, group_ids, "amin")  # [N]
    valid = (gmax != gmin).to(R.dtype)  # [N] 1 on samples of groups with a reward spread
    n_valid = valid.sum()
    return torch.where(n_valid > 0, R.new_tensor(float(R.numel())) / n_valid.clamp_min(1.0), R.new_ones(()))


@ADVANTAGES.register("gpg", config=GPGAdvantage)
def gpg(batch: RolloutBatch, cfg: GPGAdvantage) -> Tensor:
    """GPG: ``A_i = alpha (R_i - mean_g R)`` (``/ (std_g + eps)`` with ``std_normalize``), broadcast.

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``.
        cfg: std normalisation, epsilon, optional cap of alpha.

    Returns:
        [N, T] advantages in the dtype of ``rewards``; 0 for groups of one sample. Records ``alpha``
        (after the cap) with ``batch.add_metric`` (the loop's ``advantage/alpha``).
    """
    R = sequence_rewards(batch)  # [N]
    mean, std, count = group_stats(R, batch.group_ids)  # [N] each
    A = R - mean
    if cfg.std_normalize:
        A = A / (std + cfg.eps)
    alpha = gpg_alpha(R, batch.group_ids)  # 0-d
    if cfg.max_alpha is not None:
        alpha = alpha.clamp(max=cfg.max_alpha)
    batch.add_metric("alpha", alpha)  # logged as advantage/alpha
    A = alpha * A * (count > 1).to(R.dtype)
    return broadcast(A, batch)
