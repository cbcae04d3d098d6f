"""Pass@k advantage: the analytical advantage of training with the pass@k of a group as reward.

Pass@k Training rewards a set of ``k`` responses with the maximum of their rewards (1 if any is
correct). Drawing the ``k``-subsets from the ``n`` responses of a group and averaging the
GRPO-style advantage over every subset a response belongs to gives a closed form in ``n``, ``k``
and the number ``c`` of correct responses: a correct response always lifts its subsets to 1, a
wrong one only matters in subsets with no correct response. Wrong responses in groups that have a
correct one are thus penalised less than under pass@1 training (not at all when ``n - c < k``),
which keeps the policy exploring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.drpo import correctness
from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast
from anypo.types import RolloutBatch

__all__ = ["PassKAdvantage", "passk", "passk_values"]


@dataclass(frozen=True)
class PassKAdvantage(GroupRelativeConfig):
    """Analytical pass@k advantage (Pass@k Training with analytical derivation).

    Paper: Z. Chen, X. Qin, Y. Wu, Y. Ling, Q. Ye, W. X. Zhao, G. Shi, "Pass@k Training for
    Adaptively Balancing Exploration and Exploitation of Large Reasoning Models",
    https://arxiv.org/abs/2508.10751, Eq. 8-9 (the analytical advantages; equation numbers from a
    review of the paper, not read in the paper itself). Verified against the official code,
    github.com/RUCAIBox/Passk_Training ``code/passk_adv.py::calc_adv`` and its README. For a group
    of ``n`` responses of which ``c`` are correct (``C(a, b)`` the binomial coefficient, 0 when
    ``b > a``):

        R_bar = 1 - C(n - c, k) / C(n, k)              (mean pass@k reward of the k-subsets)
        sigma = sqrt(R_bar (1 - R_bar))
        A_pos = (1 - R_bar) / (sigma + eps)
        A_neg = (1 - R_bar - C(n - c - 1, k - 1) / C(n - 1, k - 1)) / (sigma + eps)

    ``k = 1`` gives GRPO with the population std (``A_pos = (1 - p) / sigma``, ``A_neg = -p / sigma``).
    ``k = n`` gives 0 everywhere (one subset, no spread): use groups larger than ``k``.

    A response is correct when its correctness (``extras["correct"]``, else the reward) is
    ``>= correct_threshold``. Deviations: the code maps reward 1 to ``A_pos``, reward 0 to
    ``A_neg`` and leaves other values unchanged; here every response is correct or not. A group
    with fewer than ``k`` responses (samples dropped after reward errors) has no ``k``-subset: its
    advantages are 0 and it is counted as ``advantage/passk_short_groups`` (the code divides 0 by 0).
    A run whose samples per prompt are below ``k`` is refused before it starts (``validate``).

    This is the estimator of the paper, not verl's ``grpo_passk`` (Y. Tang et al., "Optimizing
    Language Models for Inference Time Objectives using Reinforcement Learning",
    https://arxiv.org/abs/2503.19595: only a group's best response gets ``r_max - r_second``, i.e.
    ``k = n`` with a leave-one-out baseline).

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]`` -> ``[N, T]``.
    """

    k: int = 2
    """Subset size of the pass@k reward (must not exceed the samples per prompt; smaller is useful)."""
    eps: float = 1e-6
    """Added to sigma before dividing (official code: 1e-6)."""
    correct_threshold: float = 0.5
    """A response is correct when its correctness (extras["correct"] or reward) is >= this."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"PassKAdvantage.k must be >= 1, got {self.k}")
        if self.eps <= 0:
            raise ValueError(f"PassKAdvantage.eps must be > 0, got {self.eps}")

    @property
    def min_group_size(self) -> int:
        """Samples per prompt the run needs (``validate`` refuses fewer before training starts)."""
        return self.k


def passk_values(n: int, c: int, k: int, eps: float = 1e-6) -> tuple[float, float]:
    """``(A_pos, A_neg)`` of a group of ``n`` responses with ``c`` correct, for pass@k (``k <= n``)."""
    r_bar = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    sigma = math.sqrt(max(r_bar * (1.0 - r_bar), 0.0))
    a_pos = (1.0 - r_bar) / (sigma + eps)
    # probability that the k - 1 other members of a subset holding a wrong response are all wrong
    all_wrong = math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1) if c < n else 0.0
    a_neg = (1.0 - r_bar - all_wrong) / (sigma + eps)
    return a_pos, a_neg


@ADVANTAGES.register("passk", config=PassKAdvantage)
def passk(batch: RolloutBatch, cfg: PassKAdvantage) -> Tensor:
    """Pass@k advantage: ``A_pos`` on correct, ``A_neg`` on wrong responses of each group, broadcast.

    Args:
        batch: ``rewards [N]`` (or ``extras["correct"]``), ``group_ids [N]``, ``response_mask [N, T]``.
        cfg: k, epsilon, correctness threshold.

    Returns:
        [N, T] advantages in the dtype of ``rewards``.

    Groups with fewer than ``k`` responses get 0 and are counted (``batch.add_metric``).
    """
    R = batch.rewards
    pos = correctness(batch, cfg.correct_threshold)  # [N] bool
    _, inv = torch.unique(batch.group_ids, return_inverse=True)  # [N] dense ids 0..K-1
    K = int(inv.max()) + 1 if inv.numel() else 0
    n = torch.zeros(K, dtype=torch.long).index_add_(0, inv.cpu(), torch.ones_like(inv.cpu()))  # [K]
    c = torch.zeros(K, dtype=torch.long).index_add_(0, inv.cpu(), pos.long().cpu())  # [K]
    a_pos, a_neg = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    short = 0
    for q in range(K):  # K prompts: a handful of exact binomials each
        nq, cq = int(n[q]), int(c[q])
        if nq < cfg.k:  # no k-subset (samples dropped after reward errors): no signal, counted
            short += 1
            continue
        a_pos[q], a_neg[q] = passk_values(nq, cq, cfg.k, cfg.eps)
    batch.add_metric("passk_short_groups", short)  # advantage/passk_short_groups
    A = torch.where(pos, a_pos.to(R)[inv], a_neg.to(R)[inv])  # [N]
    return broadcast(A, batch)
