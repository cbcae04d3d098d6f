"""RiskPO: a mixed value-at-risk advantage computed over bundles of questions.

Consecutive prompts of the batch are bundled, ``bundle_size`` at a time. Within a bundle, "paper"
``j`` is the j-th sample of every question of the bundle, scored ``X_j = sum_q R_qj``; the
advantage of a paper is a risk measure of ``X_j`` against the quantiles of the bundle's paper
scores, and every response of the paper gets it (scaled by the credit rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast, correctness_or_reward, sequence_rewards
from anypo.types import RolloutBatch

__all__ = ["RiskPOAdvantage", "mixed_var", "riskpo"]

_STD_FLOOR = 1e-3  # a question whose reward std is at most this is scaled by 1 (official code)


@dataclass(frozen=True)
class RiskPOAdvantage(GroupRelativeConfig):
    """Mixed value-at-risk (MVaR) advantage with question bundling.

    Paper: "Risk-based Policy Optimization via Verifiable Reward for LLM Post-Training",
    https://arxiv.org/abs/2510.00911 (the MVaR objective and bundling; equation numbers not
    verified: the method section could not be read). Formula verified against the official code,
    github.com/RTkenny/RiskPO ``verl/trainer/ppo/core_algos.py::
    compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking`` and ``ray_trainer.py`` (bundle
    ids), with the flags of ``scripts/run_qwen2.5_1.5b_MVaR_math.sh``:

    * bundles: ``bundle_size`` consecutive prompts (here: consecutive group ids of the batch, or
      ``batch.extras["bundle_ids"]`` [N] when the loop provides them); ``n`` = the smallest group of
      the bundle; paper ``j < n`` takes the j-th sample (batch order) of every question;
      ``X_j = sum_q R_qj``; samples beyond ``n`` get advantage 0;
    * ``q_dn = Q_{alpha_dn}(X)``, ``q_up = Q_{alpha_up}(X)`` (linear interpolation, torch.quantile);
      a bundle of one paper has ``q_dn = q_up = X_0`` and std 1;
    * ``g_R = [(X - q_dn)^+ - (X - q_up)^+ + (q_dn - q_up)] / (alpha_up - alpha_dn + eps)`` (the last
      term is the "natural baseline", ``natural_baseline``), ``g_C = -(q_dn - X)^+ / (alpha_dn + eps)``,
      ``g = (w_mix g_C + g_R) / (w_mix + 1)``, then ``g / (std(X) + eps)`` (unbiased, ``std_norm``);
    * credit to response ``i`` of question ``q`` in paper ``j``: ``uniform`` ``g_j``; ``std``
      ``g_j / (sigma_q + eps)`` (``sigma_q`` the unbiased std of the question's rewards, 1 when
      <= 1e-3 or a single sample); ``score`` ``0.5 g_j`` if ``R > 0`` else ``1.5 g_j``; ``sum_mean``
      ``g_j (R_i - mean_q R) / sum_{paper} (R - mean_q R)`` (``g_j / K`` when that sum is ~0).

    Defaults are the paper's run: alpha_dn 0.2, alpha_up 0.9, bundles of 5, w_mix 1.5, credit
    ``std``, std normalisation on, with ``ppo_clip`` (eps 0.2), n = 5 samples per prompt, no KL.
    ``w_mix = 0`` is the pure RVaR advantage (``use_mixing_risk_measure=False``).

    ``signal="correct"`` (default) scores papers by the task's correctness (``extras["correct"]``,
    the reward when absent), the 0/1 verifier outcome of the official run. With the built-in tasks'
    total reward (correctness + 0.1 format) a question whose answers are all wrong has a reward std
    of about 0.05 instead of 0, and the ``std`` credit divides by it: a 20-fold push-down that
    collapsed a 30-step run (held-out pass@1 0.08 -> 0.06). ``signal="reward"`` uses the total reward.

    Deviations: the official trainer's quantile tracker (an SGD estimate of the quantiles across
    steps, ``lr_q``) is not implemented: the released trainer writes the tracked quantiles into the
    batch after that batch's advantage is computed, so they never reach the advantage, which uses
    the per-bundle quantiles as here. This part is therefore stateless. The option
    ``use_mean_as_baseline`` (off in the paper's run) is not implemented.

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]`` -> ``[N, T]``.
    """

    alpha_dn: float = 0.2
    """Lower quantile level of the bundle's paper scores (official config default 0.1; paper run 0.2)."""
    alpha_up: float = 0.9
    """Upper quantile level."""
    bundle_size: int = 5
    """Prompts per bundle (consecutive group ids of the batch)."""
    w_mix: float = 1.5
    """Weight of the lower-tail CVaR part in the mix; 0 gives the pure RVaR advantage."""
    credit: Literal["uniform", "std", "score", "sum_mean"] = "std"
    """How a paper's advantage is credited to its responses."""
    std_norm: bool = True
    """Divide each paper advantage by the unbiased std of the bundle's paper scores."""
    natural_baseline: bool = True
    """Keep the constant (q_dn - q_up) in the RVaR part (makes it <= 0)."""
    eps: float = 1e-6
    """Added to every divisor."""
    signal: Literal["correct", "reward"] = "correct"
    """correct: the task's correctness (extras["correct"], the reward when absent); reward: the total reward."""

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha_dn < self.alpha_up < 1.0:
            raise ValueError(f"need 0 < alpha_dn < alpha_up < 1, got {self.alpha_dn}, {self.alpha_up}")
        if self.bundle_size < 1:
            raise ValueError(f"bundle_size must be >= 1, got {self.bundle_size}")
        if self.w_mix < 0:
            raise ValueError(f"w_mix must be >= 0, got {self.w_mix}")
        if self.signal not in ("correct", "reward"):
            raise ValueError(f"signal must be 'correct' or 'reward', got {self.signal!r}")
        if self.credit not in ("uniform", "std", "score", "sum_mean"):
            raise ValueError(f"credit must be uniform, std, score or sum_mean, got {self.credit!r}")


def mixed_var(X: Tensor, cfg: RiskPOAdvantage) -> Tensor:
    """[n] MVaR advantage of the paper scores ``X [n]`` of one bundle (before credit assignment)."""
    if X.numel() > 1:
        levels = torch.tensor([cfg.alpha_dn, cfg.alpha_up], dtype=X.dtype, device=X.device)
        q_dn, q_up = torch.quantile(X, levels)  # linear interpolation
        std = X.std()
    else:
        q_dn = q_up = X[0]
        std = X.new_ones(())
    g_r = (X - q_dn).clamp_min(0) - (X - q_up).clamp_min(0)
    if cfg.natural_baseline:
        g_r = g_r + (q_dn - q_up)
    g_r = g_r / (cfg.alpha_up - cfg.alpha_dn + cfg.eps)
    g_c = -(q_dn - X).clamp_min(0) / (cfg.alpha_dn + cfg.eps)
    g = (cfg.w_mix * g_c + g_r) / (cfg.w_mix + 1)
    return g / (std + cfg.eps) if cfg.std_norm else g


def _bundles(batch: RolloutBatch, inv: Tensor, K: int, bundle_size: int) -> list[list[int]]:
    """Dense group indices 0..K-1 of each bundle, in group-id order."""
    ids = batch.extras.get("bundle_ids")
    if ids is None:
        return [list(range(s, min(s + bundle_size, K))) for s in range(0, K, bundle_size)]
    ids = torch.as_tensor(ids)
    group_bundle = torch.zeros(K, dtype=ids.dtype).scatter(0, inv, ids)  # [K]; a group lies in one bundle
    return [(group_bundle == b).nonzero().flatten().tolist() for b in torch.unique(group_bundle)]


@ADVANTAGES.register("riskpo", config=RiskPOAdvantage)
def riskpo(batch: RolloutBatch, cfg: RiskPOAdvantage) -> Tensor:
    """RiskPO: MVaR advantage of each paper of each bundle, credited to the paper's responses.

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``; optional
            ``extras["bundle_ids"]`` [N] (every sample of a group in the same bundle).
        cfg: quantile levels, bundle size, mixing weight, credit rule.

    Returns:
        [N, T] advantages in the dtype of ``rewards``; 0 for samples beyond a bundle's paper count.
    """
    R = correctness_or_reward(batch) if cfg.signal == "correct" else sequence_rewards(batch)  # [N]
    _, inv = torch.unique(batch.group_ids, return_inverse=True)  # [N] dense ids 0..K-1
    K = int(inv.max()) + 1 if inv.numel() else 0
    rows = [(inv == k).nonzero().flatten() for k in range(K)]  # rows of each question, in batch order
    A = torch.zeros_like(R)
    for bundle in _bundles(batch, inv, K, cfg.bundle_size):
        n = min(len(rows[k]) for k in bundle)
        papers = torch.stack([rows[k][:n] for k in bundle])  # [K_b, n] row index of question q in paper j
        X = R[papers].sum(0)  # [n] paper scores
        g = mixed_var(X, cfg)  # [n]
        for q, k in enumerate(bundle):
            r_q, idx = R[rows[k]], papers[q]
            if cfg.credit == "uniform":
                A[idx] = g
            elif cfg.credit == "std":
                sd = r_q.std() if r_q.numel() > 1 else r_q.new_zeros(())
                A[idx] = g / ((sd if float(sd) > _STD_FLOOR else 1.0) + cfg.eps)
            elif cfg.credit == "score":
                A[idx] = torch.where(R[idx] > 0, 0.5 * g, 1.5 * g)
        if cfg.credit == "sum_mean":  # split each paper's advantage in proportion to R - mean_q R
            dev = torch.stack([R[papers[q]] - R[rows[k]].mean() for q, k in enumerate(bundle)])  # [K_b, n]
            tot = dev.sum(0)  # [n]
            share = torch.where(tot.abs() > 1e-6, dev / torch.where(tot.abs() > 1e-6, tot, 1.0), 1.0 / len(bundle))
            A[papers] = g * share
    return broadcast(A, batch)
