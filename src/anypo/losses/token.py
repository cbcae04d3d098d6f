"""Token-ratio policy losses: PPO clip (GRPO, DAPO), CISPO, SAPO, and plain REINFORCE.

Conventions: ``lp``, ``old`` [N, T] current and behaviour log-probs of the sampled tokens,
``r = exp(lp - old)`` the token ratio, ``A`` [N, T] the advantages, ``m`` the response mask. Every
loss builds a per-token loss matrix ``L`` [N, T] (the quantity minimised) and reduces it with its
config's aggregation over the mini-batch's global counts (``anypo.ops.aggregate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anypo.losses.common import (
    POLICY_LOSSES,
    PolicyLossConfig,
    RatioLossConfig,
    finish,
    log_ratio,
    policy_inputs,
    ratio_metrics,
    tis_weights,
)
from anypo.ops import Aggregation, masked_mean
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["CISPO", "SAPO", "PPOClip", "Reinforce", "cispo", "ppo_clip", "reinforce", "sapo"]


@dataclass(frozen=True)
class PPOClip(RatioLossConfig):
    """PPO's clipped surrogate with decoupled bounds and optional dual clip.

    Papers: "Proximal Policy Optimization Algorithms", https://arxiv.org/abs/1707.06347, Eq. 7
    (``L = -min(r A, clip(r, 1 - eps, 1 + eps) A)``); GRPO ("DeepSeekMath",
    https://arxiv.org/abs/2402.03300, Eq. 3) uses it with group advantages; DAPO
    ("DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
    https://arxiv.org/abs/2503.14476, Sec. 3.1 "Clip-Higher") decouples ``eps_low=0.2,
    eps_high=0.28``; dual clip ("Mastering Complex Control in MOBA Games with Deep Reinforcement
    Learning", https://arxiv.org/abs/1912.09729, dual-clip PPO) bounds the loss of negative
    advantages by ``-c A``.
    Deviation: none; the log-ratio is clamped to [-20, 20] before exp (verl).
    """

    eps_low: float = 0.2
    """Lower clip range: the ratio is clipped below at 1 - eps_low."""
    eps_high: float = 0.2
    """Upper clip range: the ratio is clipped above at 1 + eps_high (DAPO: 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 (verl uses 3.0); None disables."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"eps_low and eps_high must be >= 0, got {self.eps_low}, {self.eps_high}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1 (or None), got {self.dual_clip}")


@POLICY_LOSSES.register("ppo_clip", config=PPOClip)
def ppo_clip(out: PolicyOutput, batch: RolloutBatch, cfg: PPOClip) -> LossOutput:
    """Clipped surrogate: ``L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``.

    With dual clip ``c``: ``L = min(L, -c A)`` where ``A < 0``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs [N, T]``, ``advantages [N, T]``, ``response_mask [N, T]``.
        cfg: clip ranges, dual clip, aggregation, TIS.

    Returns:
        0-d loss (dtype of ``logprobs``) and ``policy/clipfrac``, ``policy/ratio_*``,
        ``policy/approx_kl``, ``policy/loss`` (+ ``policy/dual_clipfrac``, ``tis/*`` when enabled).
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    log_r = log_ratio(lp, old)
    r = log_r.exp()
    pg_unclipped = -adv * r
    pg_clipped = -adv * r.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    loss_mat = torch.maximum(pg_unclipped, pg_clipped)  # [N, T]
    metrics = ratio_metrics(log_r, mask)
    metrics["policy/clipfrac"] = float(masked_mean((pg_clipped > pg_unclipped).to(lp.dtype), mask))
    if cfg.dual_clip is not None:
        bound = -adv * cfg.dual_clip
        dual = (adv < 0) & (loss_mat > bound)
        metrics["policy/dual_clipfrac"] = float(masked_mean(dual.to(lp.dtype), mask))
        loss_mat = torch.where(adv < 0, torch.minimum(loss_mat, bound), loss_mat)
    weights, tis_metrics = tis_weights(batch, cfg, mask)
    return finish(loss_mat, mask, batch, cfg, metrics | tis_metrics, weights)


@dataclass(frozen=True)
class CISPO(RatioLossConfig):
    """Clipped IS-weight policy optimisation: REINFORCE with a clipped, stop-gradient ratio.

    Paper: "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    https://arxiv.org/abs/2506.13585, Sec. 3.1 (the CISPO objective):
    ``L = -sg[clip(r, 1 - eps_low, 1 + eps_high)] * A * lp`` with token-mean aggregation. The paper
    sets no lower bound (a large eps_low) and tunes only eps_high; its value is not stated in the
    material we could read, so ``eps_high=0.28`` follows Trinity-RFT's default (UNVERIFIED).
    ``mask_clip`` adds the paper's unified token-mask variant (Trinity ``enable_mask_clip``): tokens
    with ``A > 0, r > 1 + eps_high`` or ``A < 0, r < 1 - eps_low`` are dropped.
    Note the loss *value* depends on absolute log-probs; only its gradient is meaningful.
    """

    eps_low: float = 1.0
    """Lower clip range of the IS weight (1.0: no lower bound, as the paper)."""
    eps_high: float = 0.28
    """Upper clip range of the IS weight (UNVERIFIED; Trinity-RFT default)."""
    mask_clip: bool = False
    """Drop tokens whose ratio left the trust region in the direction of their advantage."""


@POLICY_LOSSES.register("cispo", config=CISPO)
def cispo(out: PolicyOutput, batch: RolloutBatch, cfg: CISPO) -> LossOutput:
    """CISPO: ``L = -sg[clip(r, 1 - eps_low, 1 + eps_high)] * A * lp``; ``dL/dlp = -w A``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T].
        cfg: clip ranges, mask clip, aggregation (token_mean in the paper), TIS.

    Returns:
        0-d loss and ``policy/clipfrac`` (weights at a bound), ``policy/ratio_*``,
        ``policy/approx_kl``, ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    log_r = log_ratio(lp, old)
    r = log_r.exp().detach()
    w = r.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)  # stop-gradient IS weight
    loss_mat = -w * adv * lp
    if cfg.mask_clip:
        drop = ((adv > 0) & (r > 1.0 + cfg.eps_high)) | ((adv < 0) & (r < 1.0 - cfg.eps_low))
        loss_mat = torch.where(drop, torch.zeros_like(loss_mat), loss_mat)
    metrics = ratio_metrics(log_r, mask)
    clipped = (r > 1.0 + cfg.eps_high) | (r < 1.0 - cfg.eps_low)
    metrics["policy/clipfrac"] = float(masked_mean(clipped.to(lp.dtype), mask))
    weights, tis_metrics = tis_weights(batch, cfg, mask)
    return finish(loss_mat, mask, batch, cfg, metrics | tis_metrics, weights)


@dataclass(frozen=True)
class SAPO(RatioLossConfig):
    """Soft adaptive policy optimisation: a smooth sigmoid gate instead of hard clipping.

    Paper: "Soft Adaptive Policy Optimization", https://arxiv.org/abs/2511.20347 (the SAPO
    objective; verl ``compute_policy_loss_sapo``). Gate ``f(r) = sigmoid(tau (r - 1)) * 4 / tau``
    with ``tau = tau_pos`` where ``A > 0`` else ``tau_neg``; ``L = -f(r) A``; seq-mean-token-mean.
    The gradient is ``dL/dlp = -A * 4 p (1 - p) * r`` (``p = sigmoid(tau (r - 1))``): weight 1 at
    ``r = 1`` (on-policy SAPO is the vanilla policy gradient), decaying smoothly off-policy. This is
    the paper/verl gradient, not Trinity's ``-A sg[f(r)] lp`` variant. Log-ratio clamped to
    [-20, 20] (verl).
    """

    aggregation: Aggregation = "seq_mean_token_mean"
    tau_pos: float = 1.0
    """Gate temperature for tokens with positive advantage."""
    tau_neg: float = 1.05
    """Gate temperature for tokens with non-positive advantage (tau_neg >= tau_pos recommended)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau_pos <= 0 or self.tau_neg <= 0:
            raise ValueError(f"tau_pos and tau_neg must be positive, got {self.tau_pos}, {self.tau_neg}")


@POLICY_LOSSES.register("sapo", config=SAPO)
def sapo(out: PolicyOutput, batch: RolloutBatch, cfg: SAPO) -> LossOutput:
    """SAPO: ``L = -sigmoid(tau (r - 1)) * 4 / tau * A``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T].
        cfg: temperatures, aggregation, TIS.

    Returns:
        0-d loss and ``policy/gate_weight`` (mean gradient weight ``4 p (1 - p) r`` relative to
        on-policy REINFORCE), ``policy/gate_damping`` / ``policy/gate_damping_min`` (mean and smallest
        ``4 p (1 - p)``, the factor relative to the ratio surrogate ``-A r``: 1 on-policy),
        ``policy/ratio_*``, ``policy/approx_kl``, ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    log_r = log_ratio(lp, old)
    r = log_r.exp()
    tau = torch.where(adv > 0, torch.full_like(adv, cfg.tau_pos), torch.full_like(adv, cfg.tau_neg))
    p = torch.sigmoid(tau * (r - 1.0))
    loss_mat = -(p * 4.0 / tau) * adv
    metrics = ratio_metrics(log_r, mask)
    with torch.no_grad():
        metrics["policy/gate_weight"] = float(masked_mean(4.0 * p * (1.0 - p) * r, mask))
        # the soft trust region: 4 p (1 - p) is the gate's factor on the ratio surrogate's gradient
        # (1 at r = 1, falling off-policy); its mean and its smallest value over the tokens
        damp = 4.0 * p * (1.0 - p)
        on = mask != 0
        metrics["policy/gate_damping"] = float(masked_mean(damp, mask))
        metrics["policy/gate_damping_min"] = float(damp[on].min()) if bool(on.any()) else 1.0
    weights, tis_metrics = tis_weights(batch, cfg, mask)
    return finish(loss_mat, mask, batch, cfg, metrics | tis_metrics, weights)


@dataclass(frozen=True)
class Reinforce(PolicyLossConfig):
    """Vanilla policy gradient without importance ratio: ``L = -A * lp``.

    Paper: R. J. Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning" (1992, no arXiv); used on whole sequences by RLOO ("Back to Basics",
    https://arxiv.org/abs/2402.14740, Eq. 4). ``seq_mean_token_sum`` (default) gives the paper's
    ``-(1/N) sum_i A_i log pi(y_i | x)``. Valid on-policy only: one update per rollout batch (use
    ``ppo_clip`` for several). No TIS option (there is no ratio to correct).
    """

    aggregation: Aggregation = "seq_mean_token_sum"

    @property
    def requires_on_policy(self) -> bool:
        """The gradient ``-A grad lp`` is only unbiased on samples of the current policy."""
        return True


@POLICY_LOSSES.register("reinforce", config=Reinforce)
def reinforce(out: PolicyOutput, batch: RolloutBatch, cfg: Reinforce) -> LossOutput:
    """REINFORCE: ``L = -A * lp``; ``dL/dlp = -A`` (before aggregation).

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``advantages``, ``response_mask`` [N, T] (``old_logprobs`` unused).
        cfg: aggregation.

    Returns:
        0-d loss and ``policy/loss``, ``policy/logprob_mean``.
    """
    lp, _, adv, mask = policy_inputs(out, batch, need_old=False)
    metrics = {"policy/logprob_mean": float(masked_mean(lp.detach(), mask))}
    return finish(-adv * lp, mask, batch, cfg, metrics)
