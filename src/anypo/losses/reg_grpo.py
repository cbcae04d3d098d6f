"""Reg-GRPO: regress the GRPO advantage with a policy-derived prediction instead of clipping a surrogate.

Notation: ``d_i = sum_t m_it (lp_it - anchor_it)`` the sequence log-ratio of response ``i`` against the
anchor policy (the behaviour policy ``old_logprobs``, or the reference ``ref_logprobs``), ``A_i`` the
response's advantage (the mean of the advantages over its tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from anypo.losses.common import POLICY_LOSSES, PolicyLossConfig, finish, log_ratio, policy_inputs, ratio_metrics
from anypo.ops import Aggregation, zero_masked
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["RegGRPO", "reg_grpo"]


@dataclass(frozen=True)
class RegGRPO(PolicyLossConfig):
    """Regressive GRPO: squared error between the advantage and ``beta`` times the sequence log-ratio.

    Paper: J. Park, J. Na, J. Kim, H. J. Kim, "DeepVideo-R1: Video Reinforcement Fine-Tuning via
    Difficulty-aware Regressive GRPO", https://arxiv.org/abs/2506.07464 (NeurIPS 2025; the Reg-GRPO
    objective of the method section, equation number not readable). RECONSTRUCTED: only the abstract
    could be read ("reformulates the GRPO objective as a regression task, directly predicting the
    advantage", without clipping or min) and the official code (github.com/mlvlab/DeepVideoR1) could
    not be retrieved. Our prediction follows the closed form of KL-regularised RL, where the optimal
    policy satisfies ``r(o) = beta log(pi*(o) / pi_anchor(o)) + beta log Z(q)`` (the parametrisation of
    REBEL, https://arxiv.org/abs/2404.16767, Eq. 3, and DPO):

        d_i  = sum_t m_it (lp_it - lp_anchor_it)          # sequence log-ratio
        L_i  = (A_i - beta d_i)^2
        loss = (1/N) sum_i L_i                            # seq_mean_token_mean of L_i on every token

    UNVERIFIED choices: (1) the prediction is not centred (nor z-scored) within the group: every term
    is per response, so the micro-batch contract holds without whole groups per micro-batch; the
    group-constant ``beta log Z(q)`` is then absorbed by the regression (it pulls the group's mean
    log-ratio to the group's mean advantage, 0 for GRPO advantages). At the first update of a step
    (``d = 0``) the gradient ``-2 beta A_i grad sum_t lp_it / N`` is the centred form's too, since
    GRPO advantages sum to 0 in a group. (2) The anchor is the behaviour policy (``anchor="old"``:
    each step regresses from where the policy is; ``"ref"`` regresses the whole drift from the
    reference and needs its log-probs). (3) ``beta = 1``: the regression stops pulling once a
    response's log-likelihood moved by ``A_i / beta`` nats. (4) ``length_normalize=True`` uses the
    mean token log-ratio (GSPO's ``log s_i``) instead of the sum. Token log-ratios are clamped to
    +-20. The difficulty-aware data augmentation of DeepVideo-R1 is a data-pipeline part (the
    data/curricula issue), not part of this loss.

    Shapes: ``logprobs``, ``old_logprobs`` (or ``ref_logprobs``), ``advantages``, ``response_mask``
    [N, T] -> 0-d loss.
    """

    aggregation: Aggregation = "seq_mean_token_mean"
    beta: float = 1.0
    """Scale of the predicted advantage beta * d_i (the KL coefficient of the closed form; UNVERIFIED)."""
    anchor: Literal["old", "ref"] = "old"
    """Policy the log-ratio is taken against: old (behaviour policy) or ref (reference; needs its log-probs)."""
    length_normalize: bool = False
    """Use the mean token log-ratio of a response instead of the sum (its sequence log-likelihood ratio)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"RegGRPO.beta must be > 0 (scale of the predicted advantage), got {self.beta}")
        if self.anchor not in ("old", "ref"):
            raise ValueError(f"RegGRPO.anchor must be 'old' or 'ref', got {self.anchor!r}")

    @property
    def needs_ref_logprobs(self) -> bool:
        return self.anchor == "ref"


@POLICY_LOSSES.register("reg_grpo", config=RegGRPO)
def reg_grpo(out: PolicyOutput, batch: RolloutBatch, cfg: RegGRPO) -> LossOutput:
    """Reg-GRPO: ``L_i = (A_i - beta sum_t m_it (lp_it - lp_anchor_it))^2``, mean over responses.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs`` (or ``ref_logprobs`` with ``anchor="ref"``), ``advantages``,
            ``response_mask`` [N, T].
        cfg: beta, anchor, length normalisation, aggregation.

    Returns:
        0-d loss and ``reg_grpo/prediction_mean`` (mean of ``beta d_i`` over responses),
        ``reg_grpo/residual_abs`` (mean ``|A_i - beta d_i|``), ``policy/loss``, and for
        ``anchor="old"`` the ratio statistics ``policy/ratio_*``, ``policy/approx_kl``.
    """
    lp, old, adv, mask = policy_inputs(out, batch, need_old=cfg.anchor == "old")
    if cfg.anchor == "ref":
        hint = "RegGRPO(anchor='ref') regresses against the reference policy: the loop must run the reference model"
        anchor = zero_masked(batch.require("ref_logprobs", hint).to(lp.dtype), mask)
    else:
        anchor = old
    log_r = log_ratio(lp, anchor)  # [N, T], 0 off the mask
    d = log_r.sum(-1)  # [N] sequence log-ratio
    length = mask.sum(-1)  # [N]
    if cfg.length_normalize:
        d = d / length.clamp_min(1.0)
    A = adv.sum(-1) / length.clamp_min(1.0)  # [N] the response's advantage
    pred = cfg.beta * d  # [N]
    seq_loss = (A - pred).square()  # [N]
    loss_mat = seq_loss.unsqueeze(-1).expand_as(lp)  # [N, T]: the response's term on each of its tokens
    metrics = ratio_metrics(log_r, mask) if cfg.anchor == "old" else {}
    with torch.no_grad():
        has = length > 0
        if bool(has.any()):
            metrics["reg_grpo/prediction_mean"] = float(pred[has].mean())
            metrics["reg_grpo/residual_abs"] = float((A - pred)[has].abs().mean())
    seq_level = {"reg_grpo/prediction_mean": "seq_mean", "reg_grpo/residual_abs": "seq_mean"}
    return finish(loss_mat, mask, batch, cfg, metrics, reductions=seq_level)
