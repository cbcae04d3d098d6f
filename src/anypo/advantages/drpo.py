"""DRPO's per-sequence coefficients: the weights of its discriminative objective, from the whole batch.

DRPO's objective (``anypo.losses.drpo``) is a per-question function of the sequences' scores
``s_i`` (length-normalised log-likelihoods). Its gradient is a weighted sum of ``grad s_i`` whose
weights need the whole group: the length-shaped distribution over a question's correct responses,
and the softmax over its incorrect ones. This part computes those weights once per step, on the
whole batch, so that the loss itself is a sum of per-sequence terms (the micro-batch contract).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast
from anypo.ops import zero_masked
from anypo.types import RolloutBatch

__all__ = ["DRPOAdvantage", "correctness", "drpo"]


@dataclass(frozen=True)
class DRPOAdvantage(GroupRelativeConfig):
    """Decoupled length reward of DRPO: per-sequence weights of the discriminative objective.

    Paper: G. Li et al., "Efficient Reasoning via Decoupled Reward Policy Optimization",
    https://arxiv.org/abs/2510.04474 (the closed-form positive distribution ``pi+ ~ pi_old
    exp(r_len / lambda)`` over correct answers; equation numbers not verified: the method section
    could not be read). Verified against the official code, github.com/Optimization-AI/DRPO
    ``verl/verl/trainer/ppo/core_algos.py::compute_policy_loss_drpo`` and
    ``scripts/train/run_drpo_1.5b_8k.sh``. For a question ``q`` with positives ``P`` (correct) and
    negatives ``M`` (incorrect), both non-empty, and ``G_q`` samples:

    * positive ``i``: ``A_i = G_q * softmax_{P}((1 - |o_i| / L_max) / lambda)_i`` (the code's
      ``w_i = exp((1 - |o_i|/L_max)/lambda)`` normalised over the positives: only correct answers
      get the length term, normalised on their own);
    * negative ``j``: ``A_j = -G_q * softmax_{M}(s_j^old / tau)_j`` with ``s_j^old`` the
      length-normalised log-likelihood under the behaviour policy: the gradient weight of
      ``tau log mean_M exp(s / tau)`` at ``theta = theta_old``;
    * questions with only correct or only incorrect answers: 0 (the code drops them).

    With the ``drpo`` loss (``seq_mean_token_mean``), ``(1/N) sum_i G_q (...)`` equals the code's
    ``(1/n_questions) sum_q J_q`` when every group has G samples.

    Correctness is ``batch.extras["correct"]`` when present (the task's correctness component),
    else the reward; ``>= correct_threshold`` is correct. Deviation: the code takes ``R == 1`` as
    correct, ``R == 0`` as incorrect and ignores other values; here every sample is one or the other.
    ``L_max`` is ``max_length`` when set; None (default) is the run's generation budget
    ``max_new_tokens`` (the paper's L_max, 8192 there), which the loop records per sample in
    ``extras["max_tokens"]``; a batch without it (a hand-built one) falls back to its padded length. Hyper-parameters of the paper's run: lambda 0.1,
    tau 10 (the loss's ``tau`` must match), G = 8, 128 prompts per step.

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``, ``old_logprobs [N, T]``
    -> ``[N, T]``.
    """

    lam: float = 0.1
    """lambda, temperature of the length-shaped weights over correct answers (script: tau2 / Lambda)."""
    tau: float = 10.0
    """tau, temperature of the softmax over incorrect answers (must equal the drpo loss's tau)."""
    max_length: int | None = None
    """L_max of the length ratio |o|/L_max; None: the run's max_new_tokens (extras["max_tokens"])."""
    correct_threshold: float = 0.5
    """A sample is correct when its correctness (extras["correct"] or reward) is >= this."""

    def __post_init__(self) -> None:
        if self.lam <= 0 or self.tau <= 0:
            raise ValueError(f"lam and tau must be positive, got {self.lam}, {self.tau}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 (or None), got {self.max_length}")

    @property
    def needs_old_logprobs_before_update(self) -> bool:
        """The advantage reads the behaviour policy's log-probs of the sampled tokens."""
        return True


def correctness(batch: RolloutBatch, threshold: float) -> Tensor:
    """[N] bool: ``extras["correct"]`` (else ``rewards``) ``>= threshold``."""
    c = batch.extras.get("correct")
    values = batch.rewards if c is None else torch.as_tensor(c, dtype=batch.rewards.dtype)
    return values.to(batch.rewards.device) >= threshold


def _group_softmax(logits: Tensor, member: Tensor, inv: Tensor, K: int) -> Tensor:
    """[N] softmax of ``logits`` within each group over the ``member`` rows; 0 elsewhere."""
    neg_inf = torch.full_like(logits, float("-inf"))
    z = torch.where(member, logits, neg_inf)
    zmax = neg_inf.new_full((K,), float("-inf")).scatter_reduce(0, inv, z, "amax")  # [K]
    e = torch.where(member, (z - zmax[inv].clamp_min(torch.finfo(z.dtype).min)).exp(), torch.zeros_like(z))
    total = e.new_zeros(K).index_add_(0, inv, e)  # [K]
    return e / total[inv].clamp_min(torch.finfo(e.dtype).tiny)


@ADVANTAGES.register("drpo", config=DRPOAdvantage)
def drpo(batch: RolloutBatch, cfg: DRPOAdvantage) -> Tensor:
    """DRPO weights: ``G_q w~_i`` on correct, ``-G_q softmax(s^old / tau)_j`` on incorrect answers.

    Args:
        batch: ``rewards [N]`` (or ``extras["correct"]``), ``group_ids [N]``,
            ``response_mask [N, T]``, ``old_logprobs [N, T]``.
        cfg: lambda, tau, L_max, correctness threshold.

    Returns:
        [N, T] per-sequence coefficients broadcast over the mask, in the dtype of ``rewards``.
    """
    mask = batch.mask  # [N, T]
    hint = "DRPO weighs incorrect answers by their behaviour-policy likelihood"
    old = zero_masked(batch.require("old_logprobs", hint).to(mask.dtype), mask)
    length = mask.sum(-1)  # [N]
    s_old = old.sum(-1) / length.clamp_min(1.0)  # [N] length-normalised log-likelihood
    budget = batch.extras.get("max_tokens")
    if cfg.max_length is not None:
        L_max = float(cfg.max_length)
    elif budget:
        L_max = float(max(budget))
    else:
        L_max = float(mask.shape[-1])
    pos = correctness(batch, cfg.correct_threshold)  # [N]
    _, inv = torch.unique(batch.group_ids, return_inverse=True)  # [N] dense ids 0..K-1
    K = int(inv.max()) + 1 if inv.numel() else 0
    n_pos = pos.to(mask.dtype).new_zeros(K).index_add_(0, inv, pos.to(mask.dtype))  # [K]
    size = mask.new_zeros(K).index_add_(0, inv, torch.ones_like(length))  # [K] G_q
    valid = ((n_pos > 0) & (n_pos < size))[inv]  # [N] both correct and incorrect answers
    w_pos = _group_softmax((1.0 - length / L_max) / cfg.lam, pos & valid, inv, K)  # [N]
    p_neg = _group_softmax(s_old / cfg.tau, ~pos & valid, inv, K)  # [N]
    return broadcast(size[inv] * (w_pos - p_neg), batch)
