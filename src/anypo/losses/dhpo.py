"""DHPO: one clipped surrogate on a mixture of the token ratio (GRPO) and the sequence ratio (GSPO).

Notation: ``r_it = exp(lp_it - old_it)`` the token ratio, ``s_i = exp((1/|o_i|) sum_t m_it (lp_it -
old_it))`` the length-normalised (geometric-mean) sequence ratio, ``w_it`` in [0, 1] the weight of the
token branch, ``A_it`` the advantages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

__all__ = ["DHPO", "dhpo", "entropy_mixing_weights"]

# as GSPO (verl): the sequence log-ratio is clamped at 10 before exp
_SEQ_LOG_RATIO_MAX = 10.0


@dataclass(frozen=True)
class DHPO(RatioLossConfig):
    """Dynamic hybrid policy optimisation: branch-clipped mixture of token and sequence ratios.

    Paper: Z. Min, B. Liu et al., "Orchestrating Tokens and Sequences: Dynamic Hybrid Policy
    Optimization for RLVR", https://arxiv.org/abs/2601.05607 (Findings of ACL 2026; the hybrid
    objective of the method section, equation numbers not readable). RECONSTRUCTED from the abstract
    (no code released; the method section could not be read):

        r_mix_it = w_it r_it + (1 - w_it) s_i
        r~_it    = w_it clip(r_it, 1 - et_lo, 1 + et_hi) + (1 - w_it) clip(s_i, 1 - es_lo, 1 + es_hi)
        L_it     = max(-A_it r_mix_it, -A_it r~_it)

    i.e. PPO's pessimistic clipped surrogate on the mixed ratio, each branch clipped in its own trust
    region before mixing ("branch-specific clipping"). ``s_i`` is the geometric mean of the token
    ratios, as in GSPO (a review mentions "geometric aggregation"). Mixing:

    * ``mixing="average"``: ``w = weight`` (1/2: the averaged mixing);
    * ``mixing="entropy"``: ``w_it = H_it / (H_it + H_i)`` with ``H_it`` the (stop-gradient) entropy
      of the next-token distribution and ``H_i`` its mean over response ``i``: a token at its
      response's mean entropy gets 1/2 (the averaged mixing), high-entropy "fork" tokens lean on
      their own ratio (token credit), low-entropy tokens on the sequence ratio; ``w = 1/2`` where
      the entropy is 0 throughout.

    UNVERIFIED (the abstract does not state them): arithmetic mixing of the ratios, the outer ``max``
    with the unclipped mixture, the entropy map ``g`` (ours above), the clip ranges (0.2 for both
    branches, as the project spec's structural example; GSPO's own 3e-4 / 4e-4 is an option for the
    sequence branch), and the aggregation (token-mean, verl's default). The sequence log-ratio is
    clamped at 10 (verl's GSPO) and token log-ratios at +-20. Per-token advantages are allowed; both
    branches use ``A_it``.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``response_mask`` (and ``entropy`` for
    ``mixing="entropy"``) [N, T] -> 0-d loss.
    """

    aggregation: Aggregation = "token_mean"
    mixing: Literal["average", "entropy"] = "average"
    """average: constant weight w; entropy: w_it = H_it / (H_it + mean_t H_it) (needs the entropy)."""
    weight: float = 0.5
    """w of the averaged mixing: the token branch's share (1/2 in the paper's averaged mixing)."""
    eps_low_token: float = 0.2
    """Lower clip range of the token branch (UNVERIFIED)."""
    eps_high_token: float = 0.2
    """Upper clip range of the token branch (UNVERIFIED)."""
    eps_low_seq: float = 0.2
    """Lower clip range of the sequence branch (UNVERIFIED; GSPO uses 3e-4)."""
    eps_high_seq: float = 0.2
    """Upper clip range of the sequence branch (UNVERIFIED; GSPO uses 4e-4)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixing not in ("average", "entropy"):
            raise ValueError(f"DHPO.mixing must be 'average' or 'entropy', got {self.mixing!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"DHPO.weight must be in [0, 1] (the token branch's share), got {self.weight}")
        eps = (self.eps_low_token, self.eps_high_token, self.eps_low_seq, self.eps_high_seq)
        if min(eps) < 0:
            raise ValueError(
                f"DHPO clip ranges (eps_low_token, eps_high_token, eps_low_seq, eps_high_seq) must be >= 0, got {eps}"
            )

    @property
    def needs_entropy(self) -> bool:
        """The entropy-guided mixing weights tokens by the entropy of their next-token distribution."""
        return self.mixing == "entropy"


def entropy_mixing_weights(entropy: Tensor, mask: Tensor) -> Tensor:
    """[N, T] ``w_it = H_it / (H_it + H_i)``, ``H_i = mean_t H_it`` over the response (1/2 where both are 0).

    Per response only, so a micro-batch computes the same weights as its mini-batch. No gradient.
    """
    H = zero_masked(entropy.detach(), mask).clamp_min(0.0)  # [N, T]
    H_bar = masked_mean(H, mask, dim=-1).unsqueeze(-1)  # [N, 1]
    total = H + H_bar
    return torch.where(total > 0, H / torch.where(total > 0, total, torch.ones_like(total)), torch.full_like(H, 0.5))


@POLICY_LOSSES.register("dhpo", config=DHPO)
def dhpo(out: PolicyOutput, batch: RolloutBatch, cfg: DHPO) -> LossOutput:
    """DHPO: ``L = max(-A (w r + (1-w) s), -A (w clip(r) + (1-w) clip(s)))`` per token, aggregated.

    Args:
        out: ``logprobs [N, T]`` with grad; ``entropy [N, T]`` for ``mixing="entropy"``.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T].
        cfg: mixing, weight, branch clip ranges, aggregation, TIS.

    Returns:
        0-d loss and ``policy/clipfrac`` (tokens whose clipped term is active), ``dhpo/token_clipfrac``
        and ``dhpo/seq_clipfrac`` (tokens whose token ratio / sequence ratio lies outside its branch's
        trust region), ``dhpo/token_weight`` (mean w), ``dhpo/seq_ratio_mean`` (token-weighted), ``policy/ratio_*``,
        ``policy/approx_kl``, ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    log_r = log_ratio(lp, old)  # [N, T]
    r = log_r.exp()
    seq_log_r = masked_mean(lp - old, mask, dim=-1).clamp(max=_SEQ_LOG_RATIO_MAX)  # [N] log s_i
    s = seq_log_r.exp().unsqueeze(-1).expand_as(r)  # [N, T] every token carries s_i
    if cfg.mixing == "entropy":
        if out.entropy is None:
            raise ValueError(
                "DHPO with mixing='entropy' needs PolicyOutput.entropy (the config declares needs_entropy)"
            )
        w = entropy_mixing_weights(out.entropy.to(lp.dtype), mask)
    else:
        w = torch.full_like(r, cfg.weight)
    r_tok_clip = r.clamp(1.0 - cfg.eps_low_token, 1.0 + cfg.eps_high_token)
    s_clip = s.clamp(1.0 - cfg.eps_low_seq, 1.0 + cfg.eps_high_seq)
    r_mix = w * r + (1.0 - w) * s
    r_mix_clip = w * r_tok_clip + (1.0 - w) * s_clip  # each branch clipped before mixing
    pg_unclipped = -adv * r_mix
    pg_clipped = -adv * r_mix_clip
    loss_mat = torch.maximum(pg_unclipped, pg_clipped)  # [N, T]
    metrics = ratio_metrics(log_r, mask)
    with torch.no_grad():
        dt = lp.dtype
        metrics["policy/clipfrac"] = float(masked_mean((pg_clipped > pg_unclipped).to(dt), mask))
        metrics["dhpo/token_clipfrac"] = float(masked_mean((r_tok_clip != r).to(dt), mask))
        metrics["dhpo/seq_clipfrac"] = float(masked_mean((s_clip != s).to(dt), mask))
        metrics["dhpo/token_weight"] = float(masked_mean(w, mask))
        metrics["dhpo/seq_ratio_mean"] = float(masked_mean(s, mask))
    weights, tis_metrics = tis_weights(batch, cfg, mask)
    return finish(loss_mat, mask, batch, cfg, metrics | tis_metrics, weights)
