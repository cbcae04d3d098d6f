"""DPPO: a trust region on the change of the token's probability, not on its ratio.

PPO clips the ratio ``pi / mu`` of the sampled token, a one-sample estimate of the policy's
divergence that is noisy exactly where the vocabulary is large: raising a rare token from 1e-5 to
1e-3 is a ratio of 100 (clipped) yet a negligible change of the distribution, while a frequent
token falling from 0.99 to 0.8 is a ratio of 0.81 (often unclipped) and a large change. DPPO masks
a token out of the policy gradient when a divergence between the two distributions, restricted to
"the sampled token vs. the rest" (the binary approximation), leaves a bound, in the direction its
advantage pushes.

Notation: ``p = exp(lp)`` the current probability of the sampled token, ``mu = exp(lp_mu)`` its
probability under the anchor policy (the rollout engine's by default), ``r = p / mu``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.losses.common import POLICY_LOSSES, PolicyLossConfig, finish, log_ratio, policy_inputs, ratio_metrics
from anypo.ops import Aggregation, masked_mean, zero_masked
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["DPPO", "binary_kl", "dppo", "dppo_valid"]

# thresholds of the authors' verl example (examples/dppo_trainer/run_qwen30b_dppo.sh)
_DEFAULT_DELTA = {"tv": 0.15, "kl": 0.05}


@dataclass(frozen=True)
class DPPO(PolicyLossConfig):
    """Divergence PPO with the binary TV or binary KL trust region.

    Paper: P. Qi, X. Zhou, Z. Liu, T. Pang, C. Du, M. Lin, W. S. Lee, "Rethinking the Trust Region
    in LLM Reinforcement Learning", https://arxiv.org/abs/2602.04879, Eq. 13 (Binary-TV) and Eq. 14
    (Binary-KL) (equation numbers as cited by SkyRL's ``dppo_policy_loss``; the paper itself could
    not be read). Verified against the official code, github.com/sail-sg/Stable-RL
    ``verl/trainer/ppo/core_algos.py::compute_policy_loss_with_mask`` (``dppo_binary_tv``,
    ``dppo_binary_kl``), verl ``compute_policy_loss_dppo_tv`` / ``_kl`` and its example
    ``examples/dppo_trainer/run_qwen30b_dppo.sh`` (written by the authors), SkyRL
    ``dppo_policy_loss`` and prime-rl's default loss (``trainer/rl/loss.py::default_loss_fn``,
    which is DPPO-Binary-TV plus a squared-log-ratio KL). "dppo" in verl, SkyRL and prime-rl is
    this paper.

    A token is *valid* (kept in the gradient) unless its probability moved too far in the
    direction of its advantage:

        tv:  A > 0: p - mu <= delta_high;               A < 0: p - mu >= -delta_low
        kl:  D = mu log(mu/p) + (1 - mu) log((1 - mu + 1e-8) / (1 - p + 1e-8))
             A > 0: D <= delta_high or p <= mu;         A < 0: D <= delta_low or p >= mu
        L_it = -A_it sg[min(r_it, ratio_cap)] lp_it valid_it

    so ``dL/dlp = -A min(r, C) valid``: the ratio-surrogate gradient ``-A grad r`` inside the trust
    region (the code's form; the loss *value* depends on absolute log-probs, only its gradient is
    meaningful). ``anchor="rollout"`` measures ``r`` and the divergence against the rollout
    engine's log-probs (``batch.rollout_logprobs`` when the learner recomputed ``old_logprobs``,
    else ``old_logprobs``, which are then the engine's): the paper's recommendation (Sec. 5.2,
    verl ``bypass_mode=True``). ``anchor="old"`` uses the recomputed ``old_logprobs`` (the code's
    ``*_recompute`` modes). Neither anchor needs the loop's extra learner pass, so DPPO declares
    ``needs_rollout_logprobs`` False (see the property).

    Defaults: ``delta`` 0.15 for TV and 0.05 for KL (the authors' verl example; SkyRL and prime-rl
    default to 0.2 for TV), ``ratio_cap`` 20 (verl's default truncation; the authors' example
    disables it with 10000 and Sec. 5.4 recommends a large cap). Deviation: the log-ratio is
    clamped to [-20, 20] before ``exp`` (verl clamps the same way). No TIS option: with
    ``anchor="rollout"`` the ratio already corrects for the rollout engine.

    Shapes: ``logprobs``, ``old_logprobs`` (``rollout_logprobs``), ``advantages``,
    ``response_mask`` [N, T] -> 0-d loss.
    """

    aggregation: Aggregation = "token_mean"
    divergence: Literal["tv", "kl"] = "tv"
    """tv: |p - mu| of the sampled token (Binary-TV); kl: KL of the two-outcome split (Binary-KL)."""
    delta_low: float | None = None
    """Bound for negative advantages; None: 0.15 (tv) / 0.05 (kl)."""
    delta_high: float | None = None
    """Bound for positive advantages; None: 0.15 (tv) / 0.05 (kl)."""
    anchor: Literal["rollout", "old"] = "rollout"
    """rollout: the engine's log-probs (the paper's choice); old: the learner's recomputed old_logprobs."""
    ratio_cap: float | None = 20.0
    """Upper bound C of the stop-gradient ratio weight; None: no truncation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.divergence not in _DEFAULT_DELTA:
            raise ValueError(f"DPPO.divergence must be 'tv' or 'kl', got {self.divergence!r}")
        if self.anchor not in ("rollout", "old"):
            raise ValueError(f"DPPO.anchor must be 'rollout' or 'old', got {self.anchor!r}")
        for name in ("delta_low", "delta_high"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"DPPO.{name} must be > 0 (or None for the default), got {value}")
        if self.ratio_cap is not None and not self.ratio_cap > 0:
            raise ValueError(f"DPPO.ratio_cap must be > 0 (or None), got {self.ratio_cap}")

    @property
    def needs_rollout_logprobs(self) -> bool:
        """False for both anchors: DPPO reads one set of log-probs, never the engine's and the
        learner's side by side (it has no TIS correction). ``anchor="rollout"`` wants the engine's:
        the batch's ``old_logprobs`` when the loop did not recompute them, ``rollout_logprobs`` when
        it did (off-policy, bf16, vLLM, ``--recompute-old-logprobs``), the same values either way.
        ``anchor="old"`` wants the learner's: the loop recomputes them whenever they can differ from
        the engine's. Declaring the need would force a learner forward on every batch that changes
        nothing, the very pass the paper's bypass mode (Sec. 5.2) skips."""
        return False

    @property
    def bounds(self) -> tuple[float, float]:
        """``(delta_low, delta_high)`` with the divergence's default where None."""
        default = _DEFAULT_DELTA[self.divergence]
        low = default if self.delta_low is None else self.delta_low
        high = default if self.delta_high is None else self.delta_high
        return low, high


def binary_kl(lp: Tensor, lp_mu: Tensor) -> Tensor:
    """[N, T] KL(Bernoulli(mu) || Bernoulli(p)) of "the sampled token vs. the rest" (the code's 1e-8)."""
    p, mu = lp.exp(), lp_mu.exp()
    return mu * (lp_mu - lp) + (1 - mu) * torch.log((1 - mu + 1e-8) / (1 - p + 1e-8))


@torch.no_grad()
def dppo_valid(lp: Tensor, lp_mu: Tensor, adv: Tensor, cfg: DPPO) -> Tensor:
    """[N, T] bool: the token stays in the gradient (inside the trust region in its advantage's direction)."""
    low, high = cfg.bounds
    p, mu = lp.exp(), lp_mu.exp()
    if cfg.divergence == "tv":
        ok_pos = (p - mu) <= high
        ok_neg = (p - mu) >= -low
    else:
        div = binary_kl(lp, lp_mu)
        ok_pos = (div <= high) | (p <= mu)
        ok_neg = (div <= low) | (p >= mu)
    return torch.where(adv > 0, ok_pos, ok_neg)


@POLICY_LOSSES.register("dppo", config=DPPO)
def dppo(out: PolicyOutput, batch: RolloutBatch, cfg: DPPO) -> LossOutput:
    """DPPO: ``L = -A sg[min(r, C)] lp`` on tokens inside the binary TV / KL trust region, 0 outside.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs`` (and ``rollout_logprobs`` when set), ``advantages``,
            ``response_mask`` [N, T].
        cfg: divergence, bounds, anchor, ratio cap, aggregation.

    Returns:
        0-d loss and ``dppo/masked_frac`` (tokens outside the trust region: the mechanism; also as
        ``policy/clipfrac``), ``dppo/masked_pos_frac`` / ``dppo/masked_neg_frac`` (masked tokens with a
        positive / negative advantage, over all tokens), ``dppo/prob_shift_mean`` (mean ``|p - mu|``),
        ``dppo/capped_frac`` (weights at the ratio cap), ``policy/ratio_*`` and ``policy/approx_kl``
        against the anchor, ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    mu = old
    if cfg.anchor == "rollout" and batch.rollout_logprobs is not None:
        mu = zero_masked(batch.rollout_logprobs.to(lp.dtype), mask)
    log_r = log_ratio(lp, mu)  # [N, T]
    w = log_r.detach().exp()  # [N, T] stop-gradient ratio weight
    if cfg.ratio_cap is not None:
        w = w.clamp(max=cfg.ratio_cap)
    valid = dppo_valid(lp.detach(), mu, adv, cfg) & (mask != 0)  # [N, T]
    loss_mat = torch.where(valid, -adv * w * lp, torch.zeros_like(lp))
    metrics = ratio_metrics(log_r, mask)
    with torch.no_grad():
        on = mask != 0
        masked = (~valid & on).to(lp.dtype)
        metrics |= {
            "dppo/masked_frac": float(masked_mean(masked, mask)),
            "dppo/masked_pos_frac": float(masked_mean(masked * (adv > 0), mask)),
            "dppo/masked_neg_frac": float(masked_mean(masked * (adv < 0), mask)),
            "dppo/prob_shift_mean": float(masked_mean((lp.exp() - mu.exp()).abs(), mask)),
            "dppo/capped_frac": float(masked_mean((log_r.exp() > (cfg.ratio_cap or float("inf"))).to(lp.dtype), mask)),
        }
        metrics["policy/clipfrac"] = metrics["dppo/masked_frac"]
    return finish(loss_mat, mask, batch, cfg, metrics)
