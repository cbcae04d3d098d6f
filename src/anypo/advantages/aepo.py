"""AEPO's advantage: GRPO on the on-policy rows, 1 on the controller's temperature-``T`` REINFORCE rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast, sequence_rewards
from anypo.ops import group_stats
from anypo.types import RolloutBatch

__all__ = ["AEPOAdvantage", "aepo"]

_REINFORCE, _GROUP_REWARDS = "aepo_reinforce", "aepo_group_rewards"  # anypo.rollout.aepo's extras keys


@dataclass(frozen=True)
class AEPOAdvantage(GroupRelativeConfig):
    """AEPO: the GRPO advantage on the on-policy rows and a unit advantage on the controller rows.

    Paper: "Arbitrary Entropy Policy Optimization: Entropy Is Controllable in Reinforcement
    Fine-tuning", https://arxiv.org/abs/2510.08141; verified against the official code,
    github.com/597358816/AEPO ``verl/trainer/ray_trainer.py::fit`` (branch ``alg == "AEPO"``: the
    batch's GRPO advantages are computed before the splice, then ``entropy_controller.batch["advantages"]
    = torch.ones_like(...)``). With ``c_i = extras["aepo_reinforce"][i]`` (the ``aepo_controller``
    rollout part's flags):

        A_i = reinforce_advantage (1)                                   if c_i
        A_i = (R_i - mean(G_i)) / (std_unbiased(G_i) + eps)             otherwise

    where ``G_i`` is the rewards of row i's whole on-policy group before the splice
    (``extras["aepo_group_rewards"][i]`` when the splice took rows of that group, else the batch's
    rows of the group), broadcast over the response mask. Without the flags (another rollout part)
    this is GRPO. No deviation.

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]`` -> ``[N, T]``.
    """

    reinforce_advantage: float = 1.0
    """The advantage of every token of a controller row (the code: torch.ones_like)."""
    eps: float = 1e-6
    """Added to the group std."""

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"AEPOAdvantage.eps must be >= 0, got {self.eps}")


@ADVANTAGES.register("aepo", config=AEPOAdvantage)
def aepo(batch: RolloutBatch, cfg: AEPOAdvantage) -> Tensor:
    """AEPO advantage (see :class:`AEPOAdvantage`); records ``advantage/reinforce_rows``.

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``; optional extras
            ``aepo_reinforce`` (per row bool) and ``aepo_group_rewards`` (per row tuple or None).
        cfg: the unit advantage and eps.

    Returns:
        [N, T] advantages in the dtype of ``rewards``, 0 off the mask.
    """
    R = sequence_rewards(batch)
    N = R.shape[0]
    flags = torch.tensor([bool(f) for f in batch.extras.get(_REINFORCE) or [False] * N], dtype=torch.bool)
    full = batch.extras.get(_GROUP_REWARDS) or [None] * N
    # the on-policy rows' groups without the controller rows; a controller row is alone in its own group
    gids = torch.where(flags, -1 - torch.arange(N), batch.group_ids.to(torch.long))
    mean, std, _ = group_stats(R.double(), gids)
    for i, g in enumerate(full):
        if g is not None and not flags[i]:
            x = torch.tensor(g, dtype=torch.float64)
            mean[i] = x.mean()
            std[i] = x.std() if x.numel() > 1 else 0.0
    A = (R.double() - mean) / (std + cfg.eps)
    A = torch.where(flags, torch.full_like(A, cfg.reinforce_advantage), A).to(R.dtype)
    batch.add_metric("reinforce_rows", float(flags.sum()))
    return broadcast(A, batch)
