"""BNPO: group-centred rewards normalised by a Beta density fitted to the batch's success rates.

Each prompt's success rate ``p_q`` (the mean of its samples' rewards mapped to [0, 1]) is treated as
a draw from a Beta distribution; the batch's ``p_q`` give it by the method of moments, and the
advantage of a sample divides ``R - p_q`` by a Beta density evaluated at ``p_q`` whose parameters
follow the fitted ones. Every statistic is recomputed from the current batch: the part keeps no
state across steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.advantages.outcome import (
    ADVANTAGES,
    GroupRelativeConfig,
    broadcast,
    correctness_or_reward,
    sequence_rewards,
)
from anypo.types import RolloutBatch

__all__ = ["BNPOAdvantage", "bnpo", "bnpo_weights"]


@dataclass(frozen=True)
class BNPOAdvantage(GroupRelativeConfig):
    """Beta-normalised advantage with adaptive Beta parameters.

    Paper: C. Xiao, M. Zhang, Y. Cao, "BNPO: Beta Normalization Policy Optimization",
    https://arxiv.org/abs/2506.02864, Sec. 3 (the advantage ``A_{alpha,beta}(q, o) =
    (R(q, o) - p(q)) / f_N(p(q); alpha, beta)`` and its parameter choice; equation numbers not
    verified: the method section could not be read). Formula verified against the official code,
    github.com/changyi7231/BNPO ``recipe/bnpo/src/bnpo_ray_trainer.py::compute_bnpo_outcome_advantage``:

    * ``R~ = (R - reward_min) / (reward_max - reward_min)`` (must lie in [0, 1]);
    * per prompt ``p_q = mean_i R~_qi``; over the B prompts of the batch ``mu = mean_q p_q``,
      ``v = var_q p_q`` (unbiased), ``k = mu (1 - mu) / v - 1``, ``a = k mu``, ``b = k (1 - mu)``;
    * ``alpha = max(1 + a / 3, 1)``, ``beta = max(1 + b / 3, 1)``;
    * ``A_qi = min(1 / Beta(alpha, beta).pdf(p_q), 1e6) * (R~_qi - p_q)``, broadcast over the mask.

    ``components`` is the paper's advantage decomposition (official ``use_advantage_decomposition``):
    the advantage is computed as above for each named reward component
    (``batch.extras["components"][i][name]``, mapped with the same bounds) and the results are
    averaged. The official run (``recipe/bnpo/run.sh``) leaves it off.

    Official run: G = 16, 32 prompts per step, ``ppo_clip`` with eps 0.2 / 0.28 and dual clip 10,
    ``seq_mean_token_sum`` aggregation, no KL, lr 1e-6.

    ``signal="correct"`` (default) fits and centres the task's correctness (``extras["correct"]``,
    the 0/1 correctness component of the built-in tasks' rewards) instead of the total reward: the
    official run trains on correctness alone (``use_format_reward=False``), and the built-in tasks'
    total reward adds a 0.1 format term, which would leave [0, 1]. A batch without
    ``extras["correct"]`` (a user reward with no correctness component) uses the reward.
    ``signal="reward"`` always uses the total reward, mapped with the bounds.

    Deviations: (1) a prompt with a single sample gets advantage 0 and is left out of the moment
    fit (the code gives it ``p_q = 0`` and keeps it in the fit, which for a correct singleton means
    an advantage of up to 1e6); (2) ``v = 0`` (every prompt with the same success rate) gives
    ``k = inf`` in the code (nan advantages); here it falls back to ``alpha = beta = 1``, i.e.
    ``A = R~ - p_q``; (3) with fewer than 2 prompts the code's own fallback ``mu = 0, v = 1`` is kept
    (it also gives ``alpha = beta = 1``); (4) rewards outside the bounds raise an error (the code
    asserts).

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]`` -> ``[N, T]``.
    """

    reward_min: float = 0.0
    """Lower bound of the reward, mapped to 0."""
    reward_max: float = 1.0
    """Upper bound of the reward, mapped to 1."""
    max_weight: float = 1e6
    """Upper clamp of the normaliser 1 / f(p_q) (official code: 1e6)."""
    components: tuple[str, ...] = ()
    """Advantage decomposition: reward component names in extras["components"]; () uses the total reward."""
    signal: Literal["correct", "reward"] = "correct"
    """correct: the task's correctness (extras["correct"], the reward when absent); reward: the total reward."""

    def __post_init__(self) -> None:
        if not self.reward_max > self.reward_min:
            raise ValueError(f"reward_max must exceed reward_min, got {self.reward_min}, {self.reward_max}")
        if self.signal not in ("correct", "reward"):
            raise ValueError(f"signal must be 'correct' or 'reward', got {self.signal!r}")
        if self.max_weight <= 0:
            raise ValueError(f"max_weight must be positive, got {self.max_weight}")


def _beta_params(p: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha, beta)`` 0-d tensors from the success rates ``p [K]`` of the prompts (K >= 0)."""
    if p.numel() > 1:
        mu, var = p.mean(), p.var()  # unbiased over prompts, as torch.var in the official code
    else:  # the official fallback for a single prompt
        mu, var = p.new_zeros(()), p.new_ones(())
    if float(var) == 0.0:  # k = inf in the official code (nan); the uniform density instead
        return p.new_ones(()), p.new_ones(())
    k = mu * (1 - mu) / var - 1
    alpha = (1 + k * mu / 3).clamp_min(1.0)
    beta = (1 + k * (1 - mu) / 3).clamp_min(1.0)
    return alpha, beta


def bnpo_weights(p: Tensor, alpha: Tensor, beta: Tensor, max_weight: float = 1e6) -> Tensor:
    """``min(1 / Beta(alpha, beta).pdf(p), max_weight)`` for success rates ``p [K]`` in [0, 1].

    The log-density ``(alpha-1) log p + (beta-1) log(1-p) - log B(alpha, beta)`` uses ``xlogy``
    so that ``alpha = 1`` at ``p = 0`` gives ``0 * log 0 = 0`` (as ``torch.distributions.Beta``).
    """
    log_b = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    log_pdf = torch.xlogy(alpha - 1, p) + torch.xlogy(beta - 1, 1 - p) - log_b  # [K]
    return torch.exp(-log_pdf).clamp(0.0, max_weight)  # a zero density gives inf, clamped


def _bnpo_one(R: Tensor, group_ids: Tensor, cfg: BNPOAdvantage) -> Tensor:
    """[N] BNPO advantage of the rewards ``R [N]``."""
    Rn = (R - cfg.reward_min) / (cfg.reward_max - cfg.reward_min)
    if bool(((Rn < 0) | (Rn > 1)).any()):
        raise ValueError(
            f"bnpo: rewards must lie in [reward_min, reward_max] = [{cfg.reward_min}, {cfg.reward_max}], got "
            f"[{float(R.min())}, {float(R.max())}]: set --algo.advantage.reward-min / --algo.advantage.reward-max"
        )
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N] dense ids 0..K-1
    K = int(inv.max()) + 1 if inv.numel() else 0
    count = Rn.new_zeros(K).index_add_(0, inv, torch.ones_like(Rn))  # [K]
    p = Rn.new_zeros(K).index_add_(0, inv, Rn) / count  # [K] success rate of each prompt
    multi = count > 1  # singletons: no baseline, advantage 0, out of the fit
    alpha, beta = _beta_params(p[multi])
    w = bnpo_weights(p, alpha, beta, cfg.max_weight)  # [K]
    A = w[inv] * (Rn - p[inv])  # [N]
    return torch.where(multi[inv], A, torch.zeros_like(A))


@ADVANTAGES.register("bnpo", config=BNPOAdvantage)
def bnpo(batch: RolloutBatch, cfg: BNPOAdvantage) -> Tensor:
    """BNPO: ``A_qi = min(1 / f_Beta(alpha, beta)(p_q), 1e6) * (R~_qi - p_q)``, broadcast over the mask.

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]`` (and
            ``extras["components"]`` when ``cfg.components`` is set).
        cfg: reward bounds, weight clamp, decomposition components.

    Returns:
        [N, T] advantages in the dtype of ``rewards``.
    """
    if not cfg.components:
        R = correctness_or_reward(batch) if cfg.signal == "correct" else sequence_rewards(batch)
        return broadcast(_bnpo_one(R, batch.group_ids, cfg), batch)
    rows = batch.extras.get("components")
    if rows is None or len(rows) != batch.num_seqs or any(any(c not in r for c in cfg.components) for r in rows):
        raise ValueError(
            f"bnpo: components={cfg.components} needs batch.extras['components'] with these keys for every sample"
        )
    R = batch.rewards
    parts = [
        _bnpo_one(torch.tensor([float(r[c]) for r in rows], dtype=R.dtype, device=R.device), batch.group_ids, cfg)
        for c in cfg.components
    ]
    return broadcast(torch.stack(parts).mean(0), batch)
