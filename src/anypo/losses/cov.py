"""Clip-Cov and KL-Cov: restrain the few tokens whose log-probability covaries most with their advantage.

"The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models" (Cui et al.,
https://arxiv.org/abs/2505.22617) traces the collapse of policy entropy to the covariance between a
token's log-probability and its advantage: a likely token with a high advantage lowers the entropy
when it is reinforced. Both methods score every response token of a mini-batch by

    cov_it = (A_it - mean(A)) (lp_it - mean(lp))        (means over the mini-batch's response tokens)

and act on a tiny share of them: Clip-Cov removes the gradient of a random few inside a covariance
band, KL-Cov adds a ``|lp - old|`` penalty to the top few. The selection is a statistic of the whole
mini-batch, so it is made once per mini-batch by ``prepare_minibatch`` (the loop calls it before
splitting the mini-batch into micro-batches, ``needs_minibatch_prepare``) and stored in
``batch.extras``; the loss reads it, so the micro-batch losses sum to the mini-batch's.

Notation: ``lp``, ``old`` [N, T] current and behaviour log-probs of the sampled tokens, ``r =
exp(lp - old)``, ``A`` the advantages, ``m`` the response mask, ``n = sum m`` the mini-batch's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.losses.common import (
    POLICY_LOSSES,
    RatioLossConfig,
    finish,
    log_ratio,
    policy_inputs,
    ratio_metrics,
    tis_weights,
)
from anypo.ops import Aggregation, masked_mean, zero_masked
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["CLIP_COV_CANDIDATES", "CLIP_COV_DETACHED", "KL_COV_SELECTED", "ClipCov", "KLCov", "clip_cov", "kl_cov"]

CLIP_COV_DETACHED = "clip_cov_detached"
"""Key of ``RolloutBatch.extras``: [N, T] bool, the tokens whose gradient Clip-Cov removes."""
CLIP_COV_CANDIDATES = "clip_cov_candidates"
"""Key of ``RolloutBatch.extras``: [N, T] bool, the tokens Clip-Cov chose among (for its metrics)."""
KL_COV_SELECTED = "kl_cov_selected"
"""Key of ``RolloutBatch.extras``: [N, T] bool, the tokens KL-Cov penalises."""


@torch.no_grad()
def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """[N, T] ``(A - mean_m A) (lp - mean_m lp)``, the means over the masked tokens; 0 off the mask."""
    m = mask != 0
    lp = zero_masked(logprobs, mask)
    adv = zero_masked(advantages.to(lp.dtype), mask)
    cov = (adv - masked_mean(adv, mask.to(lp.dtype))) * (lp - masked_mean(lp, mask.to(lp.dtype)))
    return torch.where(m, cov, torch.zeros_like(cov))


def _selection(batch: RolloutBatch, key: str, like: Tensor, part: str) -> Tensor:
    """[N, T] bool ``batch.extras[key]`` cut to the (trimmed) width of ``like``."""
    sel = batch.extras.get(key)
    if sel is None:
        raise ValueError(
            f"{part} needs batch.extras[{key!r}] [N, T], its per-token selection over the whole mini-batch "
            f"(needs_minibatch_prepare): the online loop fills it; elsewhere call cfg.prepare_minibatch(batch, "
            "logprobs, seed) on the mini-batch before splitting it"
        )
    if sel.shape[0] != like.shape[0] or sel.shape[1] < like.shape[1]:
        raise ValueError(f"{part}: extras[{key!r}] has shape {tuple(sel.shape)}, the batch {tuple(like.shape)}")
    return sel[:, : like.shape[1]].to(device=like.device, dtype=torch.bool)


@dataclass(frozen=True)
class ClipCov(RatioLossConfig):
    """Clip-Cov: the PPO clipped surrogate with the gradient of a few random high-covariance tokens removed.

    Paper: G. Cui, Y. Zhang, J. Chen, L. Yuan, Z. Wang, Y. Zuo, H. Li, Y. Fan, H. Chen, W. Chen,
    Z. Liu, H. Peng, L. Bai, W. Ouyang, Y. Cheng, B. Zhou, N. Ding, "The Entropy Mechanism of
    Reinforcement Learning for Reasoning Language Models", https://arxiv.org/abs/2505.22617 (Sec. 5,
    the Clip-Cov objective; equation numbers not verified: the paper's text could not be read).
    Verified against the official code, github.com/PRIME-RL/Entropy-Mechanism-of-RL (stored copy
    LiyuanLucasLiu/Entropy-Mechanism-of-RL) ``verl/trainer/ppo/core_algos.py::
    compute_policy_loss_clip_cov``, ``verl/workers/actor/dp_actor.py``, ``recipe/dapo/7b_clip_cov.sh``,
    and verl ``compute_policy_loss_clip_cov`` (the same function, merged upstream):

        pg1 = -A r,  pg2 = -A clip(r, 1 - eps_low, 1 + eps_high)
        P   = {m = 1, pg2 > pg1}                                   (already clipped by PPO)
        C   = {m = 1, not P, cov_low < cov < cov_high}             (candidates)
        D   = min(|C|, max(1, int(frac n))) tokens of C drawn uniformly without replacement
        L   = max(pg1, pg2) (1 - 1[D]),  token mean (the detached tokens still count in n)

    The covariance uses the current log-probs (no gradient). ``D`` is drawn by ``prepare_minibatch``
    with a ``torch.Generator`` seeded by the loop (run seed, step, mini-batch index): a resumed run
    draws the same tokens.

    Deviations: the selection is over the whole mini-batch (the code: per micro-batch of its dynamic
    token budget, so there it depends on the micro-batch size); no dual clip (the code has none in
    this mode). Official recipe (Qwen2.5-7B / 32B, DAPO-Math): ``frac = 2e-4``, band ``(1, 5)``, PPO
    clip ``eps_low = eps_high = 1`` (the ratio clipped to [0, 2] only), GRPO advantages, token mean,
    mini-batches of 32 of 256 prompts x 8, dynamic sampling, no KL, no entropy bonus.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``response_mask`` [N, T];
    ``extras["clip_cov_detached"]``, ``extras["clip_cov_candidates"]`` [N, T'] with ``T' >= T`` -> 0-d loss.
    """

    aggregation: Aggregation = "token_mean"
    eps_low: float = 1.0
    """PPO clip: the ratio is clipped below at 1 - eps_low (official recipe: 1)."""
    eps_high: float = 1.0
    """PPO clip: the ratio is clipped above at 1 + eps_high (official recipe: 1)."""
    frac: float = 2e-4
    """Share of the mini-batch's response tokens detached, at least 1 (clip_cov_ratio; official 2e-4)."""
    cov_low: float = 1.0
    """Lower bound of the covariance band, exclusive (clip_cov_lb; official 1)."""
    cov_high: float = 5.0
    """Upper bound of the covariance band, exclusive (clip_cov_ub; official 5)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"ClipCov.eps_low and eps_high must be >= 0, got {self.eps_low}, {self.eps_high}")
        if not 0 < self.frac <= 1:
            raise ValueError(f"ClipCov.frac must be in (0, 1] (e.g. 2e-4), got {self.frac}")
        if not self.cov_low < self.cov_high:
            raise ValueError(
                f"ClipCov needs cov_low < cov_high (e.g. 1.0 and 5.0), got {self.cov_low}, {self.cov_high}"
            )

    @property
    def needs_minibatch_prepare(self) -> bool:
        """The detached tokens are drawn from the whole mini-batch."""
        return True

    @torch.no_grad()
    def prepare_minibatch(self, mini: RolloutBatch, logprobs: Tensor, seed: int) -> None:
        """Draw ``D`` (see the class) and store it, with the candidates, in ``mini.extras``."""
        mask = mini.response_mask
        m = mask != 0
        lp = zero_masked(logprobs, mask)
        old = zero_masked(mini.require("old_logprobs", "the behaviour log-probs").to(lp.dtype), mask)
        adv = zero_masked(mini.require("advantages", "compute them before the update").to(lp.dtype), mask)
        r = log_ratio(lp, old).exp()
        clipped = m & (-adv * r.clamp(1.0 - self.eps_low, 1.0 + self.eps_high) > -adv * r)
        cov = token_covariance(lp, adv, mask)
        cand = m & ~clipped & (cov > self.cov_low) & (cov < self.cov_high)  # [N, T]
        where = cand.reshape(-1).nonzero().flatten()  # ascending flat indices
        k = min(max(1, int(self.frac * int(m.sum()))), len(where))
        gen = torch.Generator().manual_seed(int(seed))
        pick = where[torch.randperm(len(where), generator=gen)[:k]]
        detached = torch.zeros_like(cand)
        detached.view(-1)[pick] = True
        mini.extras[CLIP_COV_DETACHED] = detached
        mini.extras[CLIP_COV_CANDIDATES] = cand


@POLICY_LOSSES.register("clip_cov", config=ClipCov)
def clip_cov(out: PolicyOutput, batch: RolloutBatch, cfg: ClipCov) -> LossOutput:
    """Clip-Cov: ``L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``, 0 on the detached tokens.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T]; ``extras["clip_cov_detached"]``
            and ``extras["clip_cov_candidates"]`` from ``ClipCov.prepare_minibatch``.
        cfg: PPO clip, selection share and band, aggregation, TIS.

    Returns:
        0-d loss and ``clip_cov/detached_frac`` (share of the mini-batch's response tokens whose
        gradient is removed), ``clip_cov/candidate_frac`` (share inside the band and not PPO-clipped),
        ``policy/clipfrac`` (PPO-clipped share), ``policy/ratio_*``, ``policy/approx_kl``, ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    detached = _selection(batch, CLIP_COV_DETACHED, mask, "clip_cov") & (mask != 0)
    cand = _selection(batch, CLIP_COV_CANDIDATES, mask, "clip_cov") & (mask != 0)
    log_r = log_ratio(lp, old)
    r = log_r.exp()
    pg_unclipped = -adv * r
    pg_clipped = -adv * r.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    loss_mat = torch.maximum(pg_unclipped, pg_clipped)  # [N, T]
    loss_mat = torch.where(detached, torch.zeros_like(loss_mat), loss_mat)  # no gradient, still counted in n
    n_tok = max(batch.scale().num_tokens, 1e-8)
    metrics = ratio_metrics(log_r, mask)
    metrics["policy/clipfrac"] = float(masked_mean((pg_clipped > pg_unclipped).to(lp.dtype), mask))
    metrics["clip_cov/detached_frac"] = float(detached.sum()) / n_tok  # partial sums over the mini-batch
    metrics["clip_cov/candidate_frac"] = float(cand.sum()) / n_tok
    weights, tis_metrics = tis_weights(batch, cfg, mask)
    sums = {"clip_cov/detached_frac": "sum", "clip_cov/candidate_frac": "sum"}
    return finish(loss_mat, mask, batch, cfg, metrics | tis_metrics, weights, reductions=sums)


@dataclass(frozen=True)
class KLCov(RatioLossConfig):
    """KL-Cov: the unclipped ratio surrogate plus a ``|lp - old|`` penalty on the top-covariance tokens.

    Paper: G. Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language
    Models", https://arxiv.org/abs/2505.22617 (Sec. 5, the KL-Cov objective; equation numbers not
    verified). Verified against the official code, github.com/PRIME-RL/Entropy-Mechanism-of-RL
    (stored copy LiyuanLucasLiu/Entropy-Mechanism-of-RL) ``verl/trainer/ppo/core_algos.py::
    compute_policy_loss_kl_cov``, ``recipe/dapo/7b_kl_cov.sh``, and verl ``compute_policy_loss_kl_cov``:

        S = the max(1, int(frac n)) response tokens of largest cov    (ties: lower flat index)
        L = -A r + beta 1[S] |lp - old|,  token mean                  (no clipping anywhere)

    ``frac`` is a share, not a percent: the official code divides its ``k_percent`` by 100 (the 7B
    recipe's 0.2 is ``frac = 2e-3``; the 32B recipe's 0.02 is ``2e-4``), while verl's ``kl_cov_ratio``
    is the share itself. The covariance uses the current log-probs (no gradient); on ``S`` the
    gradient is ``(-A r + beta sign(lp - old)) / n``, which pulls a moved token back to ``old``.

    Deviations: the selection is over the whole mini-batch (the code: per micro-batch). Official
    7B recipe: ``beta`` (ppo_kl_coef) 1, ``k_percent`` 0.2, GRPO advantages, token mean, one update per
    step (mini-batch = rollout batch of 256 prompts x 8), no dynamic sampling, no KL to a reference.
    At that single on-policy update ``lp = old`` up to the numerics of the two passes, so the
    penalty's gradient is ``beta`` times the sign of that numerical difference; it pulls moved tokens
    back from the second update of a batch on.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``response_mask`` [N, T];
    ``extras["kl_cov_selected"]`` [N, T'] with ``T' >= T`` -> 0-d loss.
    """

    aggregation: Aggregation = "token_mean"
    frac: float = 2e-3
    """Share of the mini-batch's response tokens penalised, at least 1 (k_percent / 100; 7B recipe 2e-3)."""
    beta: float = 1.0
    """Weight of the |lp - old| penalty (ppo_kl_coef; official 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.frac <= 1:
            raise ValueError(f"KLCov.frac must be in (0, 1] (a share, e.g. 2e-3 for k_percent 0.2), got {self.frac}")
        if self.beta < 0:
            raise ValueError(f"KLCov.beta must be >= 0, got {self.beta}")

    @property
    def needs_minibatch_prepare(self) -> bool:
        """The penalised tokens are the top of the whole mini-batch."""
        return True

    @torch.no_grad()
    def prepare_minibatch(self, mini: RolloutBatch, logprobs: Tensor, seed: int) -> None:
        """Select ``S`` (see the class) into ``mini.extras["kl_cov_selected"]`` (no randomness: ``seed`` unused)."""
        mask = mini.response_mask
        m = mask != 0
        adv = mini.require("advantages", "compute them before the update")
        cov = token_covariance(logprobs, adv, mask)
        where = m.reshape(-1).nonzero().flatten()  # ascending flat indices of the response tokens
        selected = torch.zeros_like(m)
        if len(where):
            k = max(1, int(len(where) * self.frac))
            order = torch.sort(cov.reshape(-1)[where], descending=True, stable=True).indices[:k]
            selected.view(-1)[where[order]] = True
        mini.extras[KL_COV_SELECTED] = selected


@POLICY_LOSSES.register("kl_cov", config=KLCov)
def kl_cov(out: PolicyOutput, batch: RolloutBatch, cfg: KLCov) -> LossOutput:
    """KL-Cov: ``L = -A r + beta 1[S] |lp - old|`` per token.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T]; ``extras["kl_cov_selected"]``
            from ``KLCov.prepare_minibatch``.
        cfg: share, beta, aggregation, TIS.

    Returns:
        0-d loss and ``kl_cov/selected_frac`` (share of the mini-batch's response tokens penalised),
        ``kl_cov/penalty`` (``beta sum_S |lp - old| / n``, the added loss), ``kl_cov/abs_kl`` (token mean
        of ``|lp - old|``, the code's ``ppo_kl``), ``policy/ratio_*``, ``policy/approx_kl``, ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    selected = _selection(batch, KL_COV_SELECTED, mask, "kl_cov") & (mask != 0)
    log_r = log_ratio(lp, old)
    r = log_r.exp()
    abs_kl = (lp - old).abs()  # [N, T]
    penalty = torch.where(selected, cfg.beta * abs_kl, torch.zeros_like(abs_kl))
    loss_mat = -adv * r + penalty  # [N, T]
    n_tok = max(batch.scale().num_tokens, 1e-8)
    metrics = ratio_metrics(log_r, mask)
    metrics["kl_cov/abs_kl"] = float(masked_mean(abs_kl.detach(), mask))
    metrics["kl_cov/selected_frac"] = float(selected.sum()) / n_tok
    metrics["kl_cov/penalty"] = float(penalty.detach().sum()) / n_tok
    weights, tis_metrics = tis_weights(batch, cfg, mask)
    sums = {"kl_cov/selected_frac": "sum", "kl_cov/penalty": "sum"}
    return finish(loss_mat, mask, batch, cfg, metrics | tis_metrics, weights, reductions=sums)
