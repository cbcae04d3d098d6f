"""LLDS: the lazy-likelihood-displacement regulariser (a likelihood-preserving hinge, gated).

Notation: ``lp``, ``old`` [N, T] current and behaviour log-probs of the sampled tokens, ``A`` [N, T]
the advantages, ``m`` the response mask (0 on padding and on tool / environment output tokens),
``d = old - lp`` the likelihood displacement of a token since the rollout (> 0: its likelihood went
down).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.ops import AGGREGATIONS, Aggregation, aggregate, zero_masked
from anypo.registry import REGISTRIES
from anypo.types import LossOutput, PartConfig, PolicyOutput, RolloutBatch

REGULARIZERS = REGISTRIES["regularizer"]

__all__ = ["ANSWER_MASK", "LLDS", "action_ids", "llds", "llds_gate"]

ANSWER_MASK = "answer_mask"
"""Key of ``RolloutBatch.extras`` holding an optional [N, T] answer-span mask: 1 on ordinary response
tokens, 0 on the final-answer span (the official ``answer_mask``; used only with ``answer_lambda``)."""


@dataclass(frozen=True)
class LLDS(PartConfig):
    """Lazy Likelihood-Displacement Stabilisation: a hinge that keeps the likelihood of non-negative-advantage
    tokens from falling below the rollout's, only where the likelihood of a whole response (or action) fell.

    Paper: W. Deng, Y. Li, B. Gong, Y. Ren, C. Thrampoulidis, X. Li, "On Group Relative Policy
    Optimization Collapse in Agent Search: The Lazy Likelihood-Displacement" (ICML 2026),
    https://arxiv.org/abs/2512.04220 (the LLDS regulariser; the paper's equation numbers could not be
    read, only its abstract). Verified against the official code,
    github.com/vengdeng/LLDS-On-Group-Relative-Policy-Optimization-Collapse-in-Search-R1,
    ``verl/workers/actor/dp_actor.py::update_policy`` (the ``loss_noreduce`` block, with
    ``chunk_sums_vectorized`` / ``expand_chunk_mask``) and ``train_grpo_nqhot.sh``
    (``NO_REDUCE_LAMBDA=0.2``, ``ISCHUNK=true``, ``MASK_ANS=false``). Per token, with
    ``pos = 1[A >= 0]`` (the "preserving set"), ``d = old - lp`` and gates from ``sg``-free sums whose
    indicator carries no gradient:

        response gate (gate="response"): g_i = 1[ sum_t d_it pos_it m_it > 0 ]
        action gate   (gate="action"):   the actions of response i are the maximal runs of 1s in
                                         (m pos)_i (tool output has m = 0, so each run is one model
                                         turn's non-negative-advantage span); g_c = 1[ sum_{t in c} d_it > 0 ]
        P_it = coef_it * g * max(0, d_it) * pos_it
        L    = agg(P)          (token mean over the response mask, as the code's masked_mean)

    ``coef_it = lambda``, or ``min(answer_lambda, lambda)`` on the answer span (tokens where
    ``extras["answer_mask"] == 0``) when ``answer_lambda`` is set. ``dL/dlp = -coef g / N_tok`` on the
    penalised tokens: their likelihood is pushed back up toward the rollout's.

    The term is exactly 0 at the first update of a rollout batch (``lp == old``): it acts only from the
    second mini-batch or epoch on (the official run: 2 mini-batches of 256 of 512 prompts).

    Deviations: ``mask_adaptive`` (the answer weight scaled by the batch's mean search count) is not
    implemented (it needs the agentic loop's search statistics); the code's ``reduce_threshold`` is
    read but unused there. The token mean is over the mini-batch (the code averages micro-batch means).

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``response_mask`` [N, T]; optional
    ``extras["answer_mask"]`` [N, T] -> 0-d loss.
    """

    coef: float = 0.2
    """lambda (the code's no_reduce_lambda): weight of the hinge; 0 disables the term."""
    gate: Literal["action", "response"] = "action"
    """action: one gate per non-negative-advantage span between tool outputs (the paper's best, A-gate);
    response: one gate per response (R-gate)."""
    answer_lambda: float | None = None
    """Weight on the answer span (extras['answer_mask'] == 0), capped at coef; None: coef everywhere."""
    aggregation: Aggregation = "token_mean"
    """Aggregation over response tokens (see ops.aggregate); the code's masked_mean is token_mean."""
    norm_length: float | None = None
    """Constant length of seq_mean_token_sum_norm; None: the mini-batch's."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"LLDS.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.gate not in ("action", "response"):
            raise ValueError(f"LLDS.gate must be 'action' or 'response', got {self.gate!r}")
        if self.coef < 0:
            raise ValueError(f"LLDS.coef must be >= 0 (0 disables the term), got {self.coef}")
        if self.answer_lambda is not None and self.answer_lambda < 0:
            raise ValueError(f"LLDS.answer_lambda must be >= 0 or None, got {self.answer_lambda}")


def action_ids(on: Tensor) -> Tensor:
    """[N, T] long: 1, 2, ... numbering the maximal runs of True in each row of ``on``, 0 elsewhere."""
    prev = torch.nn.functional.pad(on[:, :-1], (1, 0), value=False)
    starts = on & ~prev
    return starts.long().cumsum(-1) * on.long()


def llds_gate(d: Tensor, on: Tensor, gate: str) -> Tensor:
    """[N, T] bool: the tokens of ``on`` whose response (``gate="response"``) or action (``"action"``)
    has a positive summed displacement ``d`` (detached: the gate is piecewise constant)."""
    d = zero_masked(d.detach(), on)
    if gate == "response":
        return on & (d.sum(-1, keepdim=True) > 0)
    ids = action_ids(on)  # [N, T]
    sums = d.new_zeros(d.shape[0], d.shape[1] + 1).scatter_add_(1, ids, d)  # [N, T + 1]; column 0: outside
    return on & (sums.gather(1, ids) > 0)


@REGULARIZERS.register("llds", config=LLDS)
def llds(out: PolicyOutput, batch: RolloutBatch, cfg: LLDS) -> LossOutput:
    """LLDS: ``agg(coef * gate * max(0, old - lp))`` over tokens with ``A >= 0``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T]; ``extras["answer_mask"]``
            [N, T] when ``answer_lambda`` is set.
        cfg: lambda, gate, answer weight, aggregation.

    Returns:
        0-d loss and ``llds/loss`` (the term), ``llds/penalized_frac`` (share of response tokens the
        hinge acts on), ``llds/displacement`` (``sum over A >= 0 tokens of (old - lp) / N_tok``: > 0
        when the preserving set lost likelihood since the rollout).
    """
    lp = out.logprobs
    mask = batch.response_mask.to(lp.dtype)
    m = mask != 0
    lp = zero_masked(lp, mask)
    hint = "store the behaviour policy's log-probs before the update"
    old = zero_masked(batch.require("old_logprobs", hint).to(lp.dtype), mask)
    adv = zero_masked(batch.require("advantages", "compute them with an advantage part first").to(lp.dtype), mask)
    on = m & (adv >= 0)  # the preserving set
    d = old - lp  # [N, T], grad through lp
    g = llds_gate(d, on, cfg.gate)  # [N, T] bool
    coef = torch.full_like(lp, cfg.coef)
    if cfg.answer_lambda is not None:
        answer = batch.extras.get(ANSWER_MASK)
        if answer is None:
            raise ValueError(
                f"LLDS.answer_lambda is set but batch.extras[{ANSWER_MASK!r}] is missing: the rollout must mark the "
                "answer span (0) in an [N, T] mask, or set answer_lambda=None"
            )
        answer = torch.as_tensor(answer, device=lp.device)[:, : lp.shape[1]] != 0
        coef = torch.where(answer, coef, torch.full_like(lp, min(cfg.answer_lambda, cfg.coef)))
    hinge = torch.where(g, torch.relu(d), torch.zeros_like(d))  # [N, T]
    loss = aggregate(coef * hinge, mask, cfg.aggregation, batch.scale(), cfg.norm_length)
    n_tok = max(batch.scale().num_tokens, 1e-8)
    with torch.no_grad():
        metrics = {
            "llds/loss": float(loss),
            "llds/penalized_frac": float((g & (d > 0)).sum()) / n_tok,
            "llds/displacement": float(zero_masked(d, on).sum()) / n_tok,
        }
    reductions = {k: "sum" for k in metrics}
    return LossOutput(loss=loss, metrics=metrics, reductions=reductions)
