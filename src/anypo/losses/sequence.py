"""Sequence-ratio policy losses: GSPO (and its GSPO-token form) and LUSPO.

``s_i = exp((1/|o_i|) sum_t m_it (lp_it - old_it))`` is the length-normalised sequence ratio.
The sequence term ``L_i = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)`` is written on
every response token of sequence ``i`` and reduced with the config's aggregation, so that:

* ``seq_mean_token_mean`` gives ``(1/N) sum_i L_i`` (GSPO);
* ``seq_mean_token_sum`` gives ``(1/N) sum_i |o_i| L_i`` (LUSPO with the ``1/G`` normaliser);
* ``token_mean`` gives ``sum_i |o_i| L_i / sum_i |o_i|`` (LUSPO with the ``1/sum|o_i|`` normaliser).

This makes the micro-batch contract of ``anypo.ops.aggregate`` hold for sequence losses too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from anypo.losses.common import (
    POLICY_LOSSES,
    RatioLossConfig,
    finish,
    policy_inputs,
    ratio_metrics,
    tis_weights,
)
from anypo.ops import Aggregation, masked_mean
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["GSPO", "LUSPO", "gspo", "luspo"]

# verl clamps the sequence log-ratio at 10 before exp (s_i <= e^10).
_SEQ_LOG_RATIO_MAX = 10.0


@dataclass(frozen=True)
class _SequenceRatioConfig(RatioLossConfig):
    eps_low: float = 3e-4
    """Lower clip range of the sequence ratio (GSPO paper v2, Sec. 5.1)."""
    eps_high: float = 4e-4
    """Upper clip range of the sequence ratio (GSPO paper v2, Sec. 5.1)."""
    level: Literal["sequence", "token"] = "sequence"
    """sequence: GSPO (sequence advantage); token: the GSPO-token variant (per-token advantages)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in ("sequence", "token"):
            raise ValueError(f"level must be 'sequence' or 'token', got {self.level!r}")
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"eps_low and eps_high must be >= 0, got {self.eps_low}, {self.eps_high}")


@dataclass(frozen=True)
class GSPO(_SequenceRatioConfig):
    """Group sequence policy optimisation: clip the length-normalised sequence ratio.

    Paper: "Group Sequence Policy Optimization", https://arxiv.org/abs/2507.18071, Eq. 5:
    ``L = -(1/G) sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)`` with
    ``s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|)``; ``eps = 3e-4 / 4e-4`` (v2, Sec. 5.1).
    ``level="token"`` is the paper's GSPO-token: ``s_it = sg[s_i] * exp(lp_it - sg[lp_it])`` with
    per-token advantages; it equals GSPO in value and gradient when advantages are constant per
    sequence. The sequence form uses ``A_i`` = mean of the advantages over the response. Deviation:
    ``log s_i`` is clamped at 10 (verl).
    """

    aggregation: Aggregation = "seq_mean_token_mean"


@dataclass(frozen=True)
class LUSPO(_SequenceRatioConfig):
    """Length-unbiased sequence policy optimisation: GSPO with each sequence term times its length.

    Paper: "Length-Unbiased Sequence Policy Optimization: Revealing and Controlling Response Length
    Variation in RLVR", https://arxiv.org/abs/2602.05261. RECONSTRUCTED: the method section could
    not be read; summaries agree that LUSPO multiplies each sequence's GSPO loss by its length
    ``|o_i|``: ``L = -(1/Z) sum_i |o_i| min(s_i A_i, clip(s_i, ...) A_i)``. The normaliser ``Z`` is
    UNVERIFIED; we choose ``Z = G`` (``N`` over a batch), i.e. ``seq_mean_token_sum``, as the
    project spec's worked example does. ``aggregation="token_mean"`` gives ``Z = sum_i |o_i|``
    instead. Clip ranges default to GSPO's (also UNVERIFIED for LUSPO).
    """

    aggregation: Aggregation = "seq_mean_token_sum"


def _sequence_clip_loss(out: PolicyOutput, batch: RolloutBatch, cfg: _SequenceRatioConfig) -> LossOutput:
    lp, old, adv, mask = policy_inputs(out, batch)
    on = mask != 0
    delta = lp - old  # [N, T], 0 off the mask (policy_inputs zeroed both)
    seq_log_r = masked_mean(delta, mask, dim=-1).clamp(max=_SEQ_LOG_RATIO_MAX)  # [N]  log s_i
    if cfg.level == "sequence":
        s = seq_log_r.exp().unsqueeze(-1).expand_as(lp)  # [N, T] every token carries s_i
        A = masked_mean(adv, mask, dim=-1).unsqueeze(-1).expand_as(lp)  # [N, T] every token carries A_i
    else:
        # GSPO-token: value s_i, gradient through each token's own log-prob
        s = (seq_log_r.detach().unsqueeze(-1) + lp - lp.detach()).exp()  # [N, T]
        A = adv
    pg_unclipped = -A * s
    pg_clipped = -A * s.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    loss_mat = torch.maximum(pg_unclipped, pg_clipped)  # [N, T] (constant along t for level=sequence)
    metrics = ratio_metrics(delta.clamp(-20.0, 20.0), mask)
    with torch.no_grad():
        has_tokens = on.any(-1)
        seq_r = seq_log_r.exp()[has_tokens]
        clipped = (pg_clipped > pg_unclipped)[has_tokens].any(-1)
        if seq_r.numel():
            metrics["policy/seq_ratio_mean"] = float(seq_r.mean())
            metrics["policy/seq_ratio_max"] = float(seq_r.max())
            metrics["policy/seq_ratio_min"] = float(seq_r.min())
            metrics["policy/clipfrac"] = float(clipped.to(lp.dtype).mean())
    weights, tis_metrics = tis_weights(batch, cfg, mask)
    seq_level = {"policy/seq_ratio_mean": "seq_mean", "policy/clipfrac": "seq_mean"}  # over sequences
    return finish(loss_mat, mask, batch, cfg, metrics | tis_metrics, weights, seq_level)


@POLICY_LOSSES.register("gspo", config=GSPO)
def gspo(out: PolicyOutput, batch: RolloutBatch, cfg: GSPO) -> LossOutput:
    """GSPO: ``L_i = max(-A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high))``, mean over sequences.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T].
        cfg: clip ranges, level (sequence / token), aggregation, TIS.

    Returns:
        0-d loss and ``policy/clipfrac`` (fraction of sequences clipped), ``policy/seq_ratio_*``,
        token ``policy/ratio_*``, ``policy/approx_kl``, ``policy/loss``.
    """
    return _sequence_clip_loss(out, batch, cfg)


@POLICY_LOSSES.register("luspo", config=LUSPO)
def luspo(out: PolicyOutput, batch: RolloutBatch, cfg: LUSPO) -> LossOutput:
    """LUSPO (reconstructed): ``L = (1/N) sum_i |o_i| L_i^GSPO`` with the default aggregation.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T].
        cfg: as GSPO; the aggregation picks the normaliser ``Z``.

    Returns:
        0-d loss and the GSPO metrics.
    """
    return _sequence_clip_loss(out, batch, cfg)
