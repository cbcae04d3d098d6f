"""R2VPO: the unclipped ratio surrogate with a ratio-variance constraint handled by a dual variable.

Notation: ``r_it = exp(lp_it - old_it)`` the token ratio to the behaviour policy (the policy that
generated the batch, possibly several steps stale), ``A_it`` the advantages, ``m`` the response mask,
``lambda`` the dual variable (the part's state, kept across steps and in checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from anypo.losses.common import POLICY_LOSSES, PolicyLossConfig, log_ratio, policy_inputs, ratio_metrics
from anypo.ops import Aggregation, aggregate
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["R2VPO", "r2vpo", "r2vpo_dual_step"]

VAR_KEY = "r2vpo/ratio_var"
"""The metric holding this mini-batch's ratio variance: ``update_state`` reads it for the dual step."""


def r2vpo_dual_step(lam: float, ratio_var: float, delta: float, lr: float) -> float:
    """Projected dual ascent on the constraint ``Var(r) <= delta``: ``max(0, lam + lr * (Var - delta))``."""
    return max(0.0, lam + lr * (ratio_var - delta))


@dataclass(frozen=True)
class R2VPO(PolicyLossConfig):
    """Ratio-variance regularised policy optimisation (reconstructed from the abstract).

    Paper: Y. Luo, S. Han, Y. Hu, D. Li, J. Hao, "Ratio-Variance Regularized Policy Optimization for
    Efficient LLM Fine-tuning", https://arxiv.org/abs/2601.03320 (extended version: "Ratio-Variance
    Regularized Policy Optimization", https://arxiv.org/abs/2605.26784). Only the abstracts could be
    read (arXiv HTML, first page), and no code was found: the abstracts say that hard clipping is
    replaced by a constraint on the variance (second central moment) of the policy ratio, handled
    with a primal-dual method, and that stale samples of a replay buffer are re-weighted instead of
    discarded. Equation numbers: not read. Everything concrete below is a reconstruction
    (UNVERIFIED): the token ratio, the centre of the variance, the estimator's scope (all tokens of
    the mini-batch), ``delta``, the dual step size and initial value, no clipping at all.

    Per mini-batch (the quantity minimised):

        L = agg(-r_it A_it) + lambda * token_mean((r_it - c)^2 - delta)

    ``center="one"`` (default): ``c = 1``, the population mean of the ratio under the behaviour
    policy (``E_old[pi / pi_old] = 1``), so ``token_mean((r - 1)^2)`` is the ratio's second central
    moment and an estimate of the chi-square divergence chi2(pi || pi_old); it is a plain token mean,
    so micro-batches sum exactly to the mini-batch. ``center="batch"``: ``c`` is the token mean of
    ``r`` over the mini-batch (the sample variance; the part then declares ``needs_whole_minibatch``
    and the loop runs each mini-batch as one micro-batch). The surrogate uses ``aggregation``; the
    variance is always a token mean (its value must not depend on the policy term's normaliser).

    Dual variable: ``lambda`` is the part's state (``stateful``): ``init_state`` gives
    ``lambda_init``; after every optimizer step ``update_state`` applies projected dual ascent
    ``lambda <- max(0, lambda + dual_lr * (Var - delta))`` with ``Var`` the mini-batch's logged
    ``r2vpo/ratio_var``. The loss uses the value of ``batch.part_state`` (``lambda_init`` when a
    caller hands no state). On fresh on-policy data at the first update ``r = 1``, ``Var = 0`` and
    lambda decays; it grows only while updates (several epochs or mini-batches) or stale rollouts
    (a ``Replay`` schedule) push the ratios away from 1: the "soft brake".

    No clipping and no TIS option (the ratio to the behaviour policy is itself the stale-sample
    weight); the log-ratio is clamped to [-20, 20] before ``exp`` as every ratio loss here.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``response_mask`` [N, T] -> 0-d loss.
    """

    aggregation: Aggregation = "token_mean"
    delta: float = 0.01
    """Variance budget of the constraint Var(r) <= delta (UNVERIFIED)."""
    dual_lr: float = 1.0
    """Step size of the dual ascent on lambda (UNVERIFIED)."""
    lambda_init: float = 1.0
    """lambda at step 0 (UNVERIFIED)."""
    center: Literal["one", "batch"] = "one"
    """one: E[(r - 1)^2] (exact per micro-batch); batch: E[(r - mean r)^2] over the mini-batch."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.delta >= 0:
            raise ValueError(f"R2VPO.delta must be >= 0 (the variance budget), got {self.delta}")
        if not self.dual_lr >= 0:
            raise ValueError(f"R2VPO.dual_lr must be >= 0 (0 keeps lambda fixed), got {self.dual_lr}")
        if not self.lambda_init >= 0:
            raise ValueError(f"R2VPO.lambda_init must be >= 0 (a multiplier of an inequality), got {self.lambda_init}")
        if self.center not in ("one", "batch"):
            raise ValueError(f"R2VPO.center must be 'one' or 'batch', got {self.center!r}")

    @property
    def needs_whole_minibatch(self) -> bool:
        """The sample mean of ``center="batch"`` is over the whole mini-batch."""
        return self.center == "batch"

    @property
    def stateful(self) -> bool:
        """The dual variable persists across steps (and in checkpoints)."""
        return True

    def init_state(self) -> dict[str, Any]:
        return {"lambda": float(self.lambda_init)}

    def update_state(self, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """Dual ascent after an optimizer step, on that mini-batch's ratio variance."""
        if VAR_KEY in metrics:
            lam = float(state.get("lambda", self.lambda_init))
            state["lambda"] = r2vpo_dual_step(lam, float(metrics[VAR_KEY]), self.delta, self.dual_lr)


@POLICY_LOSSES.register("r2vpo", config=R2VPO)
def r2vpo(out: PolicyOutput, batch: RolloutBatch, cfg: R2VPO) -> LossOutput:
    """R2VPO: ``agg(-r A) + lambda * token_mean((r - c)^2 - delta)``; lambda from ``batch.part_state``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T]; ``part_state`` (``lambda``).
        cfg: budget, dual step, centre, aggregation.

    Returns:
        0-d loss and ``r2vpo/ratio_var`` (the mini-batch's variance estimate, summed over
        micro-batches), ``r2vpo/lambda`` (the multiplier used), ``r2vpo/penalty`` (``lambda *
        (Var - delta)``), ``policy/surrogate``, ``policy/ratio_*``, ``policy/approx_kl``,
        ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    log_r = log_ratio(lp, old)
    r = log_r.exp()
    state = batch.part_state
    lam = float(state.get("lambda", cfg.lambda_init)) if state else float(cfg.lambda_init)
    scale = batch.scale()
    # centre: 1 (the ratio's mean under the behaviour policy), or the sample mean over the mini-batch
    # (this call then sees all of it: needs_whole_minibatch)
    c = torch.ones((), dtype=r.dtype) if cfg.center == "one" else aggregate(r, mask, "token_mean", scale)
    dev = (r - c).square()  # [N, T]
    var = aggregate(dev, mask, "token_mean", scale)  # this micro-batch's share of the token mean
    slack = aggregate(dev - cfg.delta, mask, "token_mean", scale)  # share of Var - delta
    surrogate = aggregate(-adv * r, mask, cfg.aggregation, scale, cfg.norm_length)
    loss = surrogate + lam * slack
    metrics = ratio_metrics(log_r, mask)
    metrics[VAR_KEY] = float(var.detach())
    metrics["r2vpo/lambda"] = lam
    metrics["r2vpo/penalty"] = float((lam * slack).detach())
    metrics["policy/surrogate"] = float(surrogate.detach())
    metrics["policy/loss"] = float(loss.detach())
    reductions = {
        "policy/loss": "sum",
        VAR_KEY: "sum",
        "r2vpo/penalty": "sum",
        "policy/surrogate": "sum",
        "r2vpo/lambda": "max",
    }
    return LossOutput(loss=loss, metrics=metrics, reductions=reductions)
