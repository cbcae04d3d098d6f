"""Lp-Reg: low-probability tokens regularised toward a min-p-filtered proxy of the old policy.

Notation: ``lp``, ``old`` [N, T] current and behaviour log-probs of the sampled tokens ``o_it``, ``A``
the advantages, ``m`` the response mask, ``z`` [V] the behaviour policy's raw logits at a position,
``lq_it = log pi_proxy(o_it)`` the proxy's log-probability of the sampled token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from anypo.ops import AGGREGATIONS, Aggregation, aggregate, zero_masked
from anypo.registry import REGISTRIES
from anypo.types import LossOutput, PartConfig, PolicyOutput, RolloutBatch

REGULARIZERS = REGISTRIES["regularizer"]

__all__ = ["PROXY_LOGPROBS", "LpReg", "lp_reg", "lp_reg_select", "minp_proxy_logprobs"]

PROXY_LOGPROBS = "lp_reg_proxy_logprobs"
"""Key of ``RolloutBatch.extras``: [N, T] ``lq`` = log pi_proxy(o_it) at the positions
:func:`lp_reg_select` chose, NaN elsewhere. The loop fills it (see :class:`LpReg`)."""

_FILTERED = -1e4  # the official code's logit for tokens the filter removes


@dataclass(frozen=True)
class LpReg(PartConfig):
    """Low-probability regularisation: on the lowest-probability negative-advantage tokens, a k3 penalty
    pulling their log-probability up toward a min-p-filtered proxy of the behaviour policy.

    Paper: "Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable Reward"
    (Lp-Reg), https://arxiv.org/abs/2510.03222 (the paper states a forward KL ``D_KL(pi_proxy ||
    pi_theta)`` toward the proxy on selected tokens; its equation numbers could not be read). Verified
    against the authors' code, github.com/CarlanLark/Lp-Reg-dev (commit 33b27e2; the official
    github.com/CarlanLark/Lp-Reg had no stored copy): ``verl/trainer/ppo/core_algos.py::
    compute_policy_loss_lp_reg``, ``verl/workers/actor/dp_actor.py::apply_min_p`` and its
    ``loss_mode == "lp_reg"`` branch, ``recipe/lp_reg/Qwen3_14b_lp_reg_onpolicy_64gpu.sh``. There:

        proxy (old-log-prob pass, no grad): p = softmax(z) over the vocabulary (raw logits);
            keep v iff p_v >= kappa max_v p_v (regular_type="minp"; "fixed": p_v >= kappa);
            z'_v = z_v if kept else -1e4;  lq = log_softmax(z' / T_rollout)[o]
        S   = the k valid A < 0 tokens of lowest sg(lp), k = max(1, int(#{A < 0} * neg_frac)), and
              only when k > 1 (so k = 1 selects nothing); then only those with sg(lp) < lq
        loss per token: on S, -A r + beta k3(lp, lq) (the unclipped ratio term), elsewhere the clipped
              PPO term;  k3 = clamp(exp(lq - lp) - (lq - lp) - 1, -10, 10);  token mean
        (the same with pos_frac for A > 0 tokens; pos_frac = 0 in the recipe)

    This part is the added term ``beta * agg(1[t in S] k3_t)``. With ``PPOClip(eps_low >= 1)`` and no
    dual clip (the recipe: clip_ratio_low 1.0, clip_ratio_high 9.0, no dual clip in ``lp_reg`` mode) the
    clipped and unclipped terms of a token with ``A < 0`` are equal (``max(r, 1 - eps_low) = r``), so
    ppo_clip + lp_reg is the code's loss exactly (on ``A > 0`` tokens they differ only where ``r > 1 +
    eps_high = 10``). ``dL/dlp = beta (1 - exp(lq - lp)) / N_tok < 0`` on ``S``: the likelihood is pushed
    up toward the proxy's.

    **Inputs from the loop** (``needs_old_proxy_logprobs``): ``batch.extras["lp_reg_proxy_logprobs"]``
    [N, T], ``lq`` at the selected positions and NaN elsewhere. After advantages and before the update,
    the loop selects the positions with :func:`lp_reg_select` (from ``old_logprobs``, ``advantages``,
    mask: [N, T] scalars), then runs the behaviour policy (no grad) and, per micro-batch, takes the raw
    logits of the selected positions only ([k, V]; k is about ``neg_frac`` of the negative tokens, 1%)
    through :func:`minp_proxy_logprobs` at the rollout temperature. Nothing of size [N, T, V] exists at
    once. On-policy with the engine's log-probs this is one extra no-grad forward per step; where the
    loop recomputes old log-probs it can reuse that forward.

    Deviations: the selection uses ``old_logprobs`` (the code: the current ``sg(lp)``; equal at the one
    on-policy update of the recipe, where the policy is the behaviour policy) and is made over the whole
    rollout batch (the code: per micro-batch of 2 sequences, so the selection there depends on the
    micro-batch size); the test ``sg(lp) < lq`` uses the current log-probs, as the code. Ties in the
    selection go to the lower flat index (``torch.topk`` in the code is unspecified).

    Shapes: ``logprobs``, ``response_mask`` [N, T]; ``extras["lp_reg_proxy_logprobs"]`` [N, T'] with
    ``T' >= T`` (micro-batches are trimmed on the right) -> 0-d loss.
    """

    beta: float = 1.0
    """Weight of the k3 term (ppo_kl_coef; recipe 1)."""
    kappa: float = 0.02
    """Filter threshold (minp_p_threshold; recipe 0.02): relative to the top probability (minp) or absolute (fixed)."""
    filter: Literal["minp", "fixed"] = "minp"
    """minp: keep p >= kappa max p (the recipe's regular_type); fixed: keep p >= kappa."""
    neg_frac: float = 0.01
    """Share of the negative-advantage tokens selected (logp_neg_k_percent; recipe 0.01)."""
    pos_frac: float = 0.0
    """Share of the positive-advantage tokens selected (logp_pos_k_percent; recipe 0)."""
    aggregation: Aggregation = "token_mean"
    """Aggregation over response tokens (the recipe's token-mean)."""
    norm_length: float | None = None
    """Constant length of seq_mean_token_sum_norm; None: the mini-batch's."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"LpReg.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.filter not in ("minp", "fixed"):
            raise ValueError(f"LpReg.filter must be 'minp' or 'fixed', got {self.filter!r}")
        if not 0 < self.kappa <= 1:
            raise ValueError(f"LpReg.kappa must be in (0, 1], got {self.kappa}")
        if not (0 <= self.neg_frac <= 1 and 0 <= self.pos_frac <= 1):
            raise ValueError(
                f"LpReg.neg_frac and LpReg.pos_frac must be in [0, 1], got {self.neg_frac}, {self.pos_frac}"
            )
        if self.beta < 0:
            raise ValueError(f"LpReg.beta must be >= 0, got {self.beta}")

    @property
    def needs_old_proxy_logprobs(self) -> bool:
        """The loop must fill extras['lp_reg_proxy_logprobs'] (selected positions, min-p proxy of pi_old)
        through the three members below: ``proxy_key``, ``proxy_positions``, ``proxy_logprobs``."""
        return self.beta != 0 and (self.neg_frac > 0 or self.pos_frac > 0)

    @property
    def needs_old_logprobs_before_update(self) -> bool:
        """The proxy positions (``proxy_positions``) are chosen from ``old_logprobs`` before the update,
        so an inexact engine's step (the bfloat16 engine, vLLM with top-k / top-p, bf16 autocast)
        must get them from the learner's no-grad pass, not from the training forward."""
        return self.needs_old_proxy_logprobs

    proxy_key: ClassVar[str] = PROXY_LOGPROBS
    """The extras key the loop fills with [N, T] proxy log-probs (NaN off the positions)."""

    def proxy_positions(self, batch: RolloutBatch) -> Tensor:
        """[N, T] bool: where the loop must compute the proxy (:func:`lp_reg_select`; needs advantages)."""
        hint = "the behaviour log-probs, before the proxy pass"
        adv = batch.require("advantages", "the proxy positions are chosen after the advantages")
        return lp_reg_select(batch.require("old_logprobs", hint), adv, batch.response_mask, self)

    def proxy_logprobs(self, logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
        """[k] the proxy's log-probs of ``targets`` [k] from the behaviour policy's raw ``logits`` [k, V]
        (:func:`minp_proxy_logprobs` at the rollout temperature)."""
        return minp_proxy_logprobs(logits, targets, self.kappa, self.filter, temperature)


def minp_proxy_logprobs(
    logits: Tensor, targets: Tensor, kappa: float, filter: str = "minp", temperature: float = 1.0
) -> Tensor:
    """[k] ``log pi_proxy(target)``: the min-p-filtered, renormalised distribution of raw ``logits`` [k, V].

    As the official ``apply_min_p`` (hard mask): the filter is applied to ``softmax(logits)`` (the raw
    logits, before the temperature), removed tokens get logit -1e4, and the result is
    ``log_softmax(z' / temperature)`` at ``targets`` [k]. A removed target gets about ``-1e4 / T``.
    Computed in float32 or wider; no gradient.
    """
    with torch.no_grad():
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        p = torch.softmax(z, dim=-1)
        keep = p >= (kappa * p.amax(-1, keepdim=True) if filter == "minp" else kappa)
        z = torch.where(keep, z, torch.full_like(z, _FILTERED))
        return torch.log_softmax(z / temperature, dim=-1).gather(-1, targets[:, None].long()).squeeze(-1)


def _lowest(score: Tensor, pool: Tensor, frac: float) -> Tensor:
    """[N, T] bool: the ``k = max(1, int(n frac))`` entries of ``pool`` (n of them) with the lowest
    ``score``, ties to the lower flat index; nothing when ``k <= 1`` (the code's strict ``k > 1``)."""
    out = torch.zeros_like(pool)
    n = int(pool.sum())
    k = max(1, int(n * frac))
    if n == 0 or k <= 1:
        return out
    flat = pool.reshape(-1).nonzero().flatten()  # ascending flat indices
    order = torch.sort(score.reshape(-1)[flat], stable=True).indices[:k]
    out.view(-1)[flat[order]] = True
    return out


@torch.no_grad()
def lp_reg_select(old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: LpReg) -> Tensor:
    """[N, T] bool: the positions whose proxy log-prob the loop must compute for ``cfg``.

    Among the masked tokens with ``A < 0``, the ``max(1, int(n_neg neg_frac))`` of lowest
    ``old_logprobs`` (none when that is 1), and likewise with ``pos_frac`` among ``A > 0``.
    """
    m = mask != 0
    old = zero_masked(old_logprobs, mask)
    adv = zero_masked(advantages, mask)
    return _lowest(old, m & (adv < 0), cfg.neg_frac) | _lowest(old, m & (adv > 0), cfg.pos_frac)


@REGULARIZERS.register("lp_reg", config=LpReg)
def lp_reg(out: PolicyOutput, batch: RolloutBatch, cfg: LpReg) -> LossOutput:
    """Lp-Reg: ``beta * agg(1[t in S] k3(lp, lq))`` with ``S`` the selected tokens with ``sg(lp) < lq``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``response_mask [N, T]``; ``extras["lp_reg_proxy_logprobs"]`` (lq at the selected
            positions, NaN elsewhere).
        cfg: beta, filter and selection settings (the latter used by the loop), aggregation.

    Returns:
        0-d loss and ``lp_reg/loss``, ``lp_reg/selected_frac`` (share of response tokens with a proxy),
        ``lp_reg/regularized_frac`` (share in ``S``), ``lp_reg/k3`` (``sum over S of k3 / N_tok``).
    """
    lp = out.logprobs
    mask = batch.response_mask.to(lp.dtype)
    if not cfg.needs_old_proxy_logprobs:
        return LossOutput(loss=(zero_masked(lp, mask) * 0).sum(), metrics={})
    lq = batch.extras.get(PROXY_LOGPROBS)
    if lq is None:
        raise ValueError(
            f"lp_reg needs batch.extras[{PROXY_LOGPROBS!r}] [N, T] (the min-p proxy log-probs of the old policy at "
            "the positions lp_reg_select chose, NaN elsewhere; needs_old_proxy_logprobs): the loop must fill it in its "
            "old-policy pass"
        )
    N, T = lp.shape
    lq = torch.as_tensor(lq)
    if lq.shape[0] != N or lq.shape[1] < T:
        raise ValueError(f"lp_reg: extras[{PROXY_LOGPROBS!r}] has shape {tuple(lq.shape)}, the batch [{N}, {T}]")
    lq = lq[:, :T].to(device=lp.device, dtype=lp.dtype)
    has = (mask != 0) & torch.isfinite(lq)
    lq = torch.where(has, lq, torch.zeros_like(lq))
    lp = zero_masked(lp, mask)
    S = has & (lp.detach() < lq)  # only where the policy is below the proxy
    delta = lq - lp  # [N, T], grad through lp
    k3 = (delta.exp() - delta - 1.0).clamp(-10.0, 10.0)  # verl's low_var_kl(lp, lq)
    k3 = torch.where(S, k3, torch.zeros_like(k3))
    value = aggregate(k3, mask, cfg.aggregation, batch.scale(), cfg.norm_length)
    n_tok = max(batch.scale().num_tokens, 1e-8)
    metrics = {
        "lp_reg/loss": float(cfg.beta * value.detach()),
        "lp_reg/selected_frac": float(has.sum()) / n_tok,
        "lp_reg/regularized_frac": float(S.sum()) / n_tok,
        "lp_reg/k3": float(k3.detach().sum()) / n_tok,
    }
    return LossOutput(loss=cfg.beta * value, metrics=metrics, reductions={k: "sum" for k in metrics})
