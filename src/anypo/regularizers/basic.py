"""Regularizers (kind ``regularizer``): ``fn(out, batch, cfg) -> LossOutput`` added to the policy loss.

``kl``: a KL(pi || pi_ref) penalty in the loss (GRPO style, as opposed to KL-in-reward, which the
``reinforce_pp`` and ``gae`` advantage parts offer). ``entropy``: an entropy bonus.
"""

from __future__ import annotations

from dataclasses import dataclass

from anypo.ops import AGGREGATIONS, Aggregation, KLEstimator, aggregate, kl_estimate, zero_masked
from anypo.registry import REGISTRIES
from anypo.types import LossOutput, PartConfig, PolicyOutput, RolloutBatch

REGULARIZERS = REGISTRIES["regularizer"]

__all__ = ["EntropyBonus", "KLPenalty", "entropy", "kl"]


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


@dataclass(frozen=True)
class KLPenalty(PartConfig):
    """KL penalty to the reference policy, added to the loss: ``coef * agg(k(lp, ref))``.

    Paper: GRPO, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
    Models", https://arxiv.org/abs/2402.03300, Eq. 3-4 (``beta * D_KL`` with the unbiased k3
    estimator ``pi_ref/pi - log(pi_ref/pi) - 1``, beta = 0.04). Estimators k1/k2/k3 as J. Schulman,
    http://joschu.net/blog/kl-approx.html; k3 is clamped as verl's ``low_var_kl``. Default ``coef``
    0.001 is verl's ``kl_loss_coef``; the GRPO preset sets 0.04.
    """

    coef: float = 0.001
    """beta: weight of the KL term (0 disables it and the need for reference log-probs)."""
    estimator: KLEstimator = "k3"
    """k1 (log-ratio), k2 (half squared log-ratio) or k3 (low-variance, non-negative)."""
    aggregation: Aggregation = "token_mean"
    """Aggregation over response tokens (see ops.aggregate)."""
    norm_length: float | None = None
    """Constant length of seq_mean_token_sum_norm; None: the mini-batch's padded T."""

    def __post_init__(self) -> None:
        _check_aggregation(self.aggregation)
        if self.estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"estimator must be k1, k2 or k3, got {self.estimator!r}")

    @property
    def needs_ref_logprobs(self) -> bool:
        return self.coef != 0


@REGULARIZERS.register("kl", config=KLPenalty)
def kl(out: PolicyOutput, batch: RolloutBatch, cfg: KLPenalty) -> LossOutput:
    """KL penalty: ``coef * agg(k(lp, ref_lp))`` over the response tokens.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``ref_logprobs [N, T]``, ``response_mask [N, T]``.
        cfg: coefficient, estimator, aggregation.

    Returns:
        0-d loss (dtype of ``logprobs``; a constant 0 when ``coef == 0`` and no reference is
        given) and ``kl/ref`` (the aggregated estimate, without ``coef``).
    """
    lp = out.logprobs
    if cfg.coef == 0 and batch.ref_logprobs is None:
        return LossOutput(loss=lp.new_zeros(()), metrics={})
    ref = batch.require("ref_logprobs", "KLPenalty.coef != 0: the loop must run the reference model").to(lp.dtype)
    mask = batch.response_mask
    est = kl_estimate(zero_masked(lp, mask), zero_masked(ref, mask), cfg.estimator)  # [N, T]
    value = aggregate(est, mask, cfg.aggregation, batch.scale(), cfg.norm_length)
    return LossOutput(loss=cfg.coef * value, metrics={"kl/ref": float(value.detach())}, reductions={"kl/ref": "sum"})


@dataclass(frozen=True)
class EntropyBonus(PartConfig):
    """Entropy bonus: ``loss = -coef * agg(H)`` with ``H`` the next-token entropy.

    Source: the entropy term of PPO's combined objective, "Proximal Policy Optimization
    Algorithms", https://arxiv.org/abs/1707.06347, Eq. 9 (``+ c2 S[pi]``); verl's
    ``entropy_coeff``. Needs ``PolicyOutput.entropy`` (the loop computes it when ``needs_entropy``).
    """

    coef: float = 0.001
    """c2: weight of the bonus (the loss decreases when entropy increases)."""
    aggregation: Aggregation = "token_mean"
    """Aggregation over response tokens (see ops.aggregate)."""
    norm_length: float | None = None
    """Constant length of seq_mean_token_sum_norm; None: the mini-batch's padded T."""

    def __post_init__(self) -> None:
        _check_aggregation(self.aggregation)

    @property
    def needs_entropy(self) -> bool:
        return True


@REGULARIZERS.register("entropy", config=EntropyBonus)
def entropy(out: PolicyOutput, batch: RolloutBatch, cfg: EntropyBonus) -> LossOutput:
    """Entropy bonus: ``-coef * agg(entropy)``.

    Args:
        out: ``entropy [N, T]`` (with grad).
        batch: ``response_mask [N, T]``.
        cfg: coefficient, aggregation.

    Returns:
        0-d loss and ``policy/entropy`` (the aggregated entropy).
    """
    if out.entropy is None:
        raise ValueError("PolicyOutput.entropy is None, but the entropy regularizer needs it (needs_entropy)")
    value = aggregate(out.entropy, batch.response_mask, cfg.aggregation, batch.scale(), cfg.norm_length)
    metrics = {"policy/entropy": float(value.detach())}
    return LossOutput(loss=-cfg.coef * value, metrics=metrics, reductions={"policy/entropy": "sum"})
