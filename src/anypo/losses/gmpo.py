"""GMPO: the geometric mean of the token ratios of a sequence, clipped token by token in log space.

GRPO maximises the arithmetic mean over tokens of ``r_it A_i``, where one token with an extreme
ratio dominates the sum. GMPO maximises ``A_i (prod_t r_it)^(1/|o_i|)`` instead, i.e. the exponent
of the mean *log*-ratio, which an outlier moves much less. Each token's log-ratio is clipped
pessimistically (as PPO clips the ratio) before the mean is taken.

Notation: ``d_it = lp_it - old_it``, ``A_i`` the sequence advantage, ``s_i = sign(A_i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anypo.losses.common import POLICY_LOSSES, PolicyLossConfig, finish, log_ratio, policy_inputs, ratio_metrics
from anypo.ops import Aggregation, masked_mean
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["GMPO", "gmpo"]


@dataclass(frozen=True)
class GMPO(PolicyLossConfig):
    """Geometric-Mean Policy Optimization: ``L_i = -A_i exp(mean_t clip_s(d_it))``.

    Paper: Y. Zhao, Y. Liu, J. Liu, J. Chen, X. Wu, Y. Hao, T. Lv, S. Huang, L. Cui, Q. Ye,
    F. Wan, F. Wei, "Geometric-Mean Policy Optimization", https://arxiv.org/abs/2507.20673 (the
    GMPO objective with token-level clipping in log space, ``clip(r, e^-eps, e^eps)``; equation
    numbers not verified: the method section could not be read). Verified against the official
    code, github.com/callsys/GMPO ``train_zero_math_gmpo.py`` (``critic_type_modify == "gmpo"``,
    ``scripts/qwen2.5-math-7b-gmpo.sh``: cliprange 0.4) and verl ``compute_policy_loss_geo_mean``:

        d~_it = s_i min(s_i d_it, s_i clip(d_it, -eps_low, eps_high))   (pessimistic per token)
        rho_i = exp((1/|o_i|) sum_t m_it d~_it)                        (geometric-mean ratio)
        L_i   = -A_i rho_i,      loss = (1/N) sum_i L_i  (seq_mean_token_mean)

    ``A_i`` is the mean of the advantages over the response (outcome advantages are constant per
    sequence). The gradient is ``dL_i/dlp_it = -A_i rho_i / |o_i|`` on tokens whose log-ratio is
    not clipped in the direction of their advantage, 0 on the others. ``eps_low`` / ``eps_high``
    bound the *log*-ratio (0.4: the ratio stays in [0.67, 1.49]).

    Deviations: the token log-ratio is clamped to [-20, 20] before anything else (verl leaves that
    line commented out); no TIS option (verl multiplies by the geometric mean of its rollout
    weights). Other aggregations weight ``L_i`` by the response length (``token_mean``,
    ``seq_mean_token_sum``), which is not the paper's.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``response_mask`` [N, T] -> 0-d loss.
    """

    aggregation: Aggregation = "seq_mean_token_mean"
    eps_low: float = 0.4
    """Lower bound of the token log-ratio: clip(d, -eps_low, eps_high) (official: 0.4)."""
    eps_high: float = 0.4
    """Upper bound of the token log-ratio (official: 0.4)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.eps_low > 0 and self.eps_high > 0):
            raise ValueError(f"GMPO.eps_low and eps_high must be > 0, got {self.eps_low}, {self.eps_high}")


@POLICY_LOSSES.register("gmpo", config=GMPO)
def gmpo(out: PolicyOutput, batch: RolloutBatch, cfg: GMPO) -> LossOutput:
    """GMPO: ``L_i = -A_i exp(mean_t s_i min(s_i d_it, s_i clip(d_it, -eps_low, eps_high)))``.

    Args:
        out: ``logprobs [N, T]`` with grad.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T].
        cfg: log-space clip bounds, aggregation.

    Returns:
        0-d loss and ``policy/clipfrac`` (tokens whose log-ratio is clipped in the direction of their
        advantage), ``policy/seq_ratio_mean`` / ``_max`` / ``_min`` (the geometric-mean ratios
        ``rho_i``, next to the token ``policy/ratio_*`` they tame), ``policy/approx_kl``,
        ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    d = log_ratio(lp, old)  # [N, T], 0 off the mask
    length = mask.sum(-1).clamp_min(1.0)  # [N]
    A = adv.sum(-1) / length  # [N] sequence advantage
    s = torch.sign(A).unsqueeze(-1)  # [N, 1]
    d_clip = d.clamp(-cfg.eps_low, cfg.eps_high)
    d_pess = s * torch.minimum(s * d, s * d_clip)  # [N, T] pessimistic log-ratio (d where A = 0 is unused)
    rho = ((d_pess * mask).sum(-1) / length).exp()  # [N] geometric-mean ratio
    seq_loss = -A * rho  # [N]
    loss_mat = seq_loss.unsqueeze(-1).expand_as(mask)  # [N, T] every token carries L_i
    metrics = ratio_metrics(d, mask)
    with torch.no_grad():
        clipped = (d_pess != d) & (s != 0) & (mask != 0)  # [N, T]; A = 0 rows have no clip
        metrics["policy/clipfrac"] = float(masked_mean(clipped.to(lp.dtype), mask))
        has = (mask != 0).any(-1)
        if bool(has.any()):
            r = rho[has]
            metrics |= {
                "policy/seq_ratio_mean": float(r.mean()),
                "policy/seq_ratio_max": float(r.max()),
                "policy/seq_ratio_min": float(r.min()),
            }
    return finish(loss_mat, mask, batch, cfg, metrics, reductions={"policy/seq_ratio_mean": "seq_mean"})
