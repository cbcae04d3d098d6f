"""Preference losses of the online / iterative methods (kind ``preference_loss``), which read per-pair
oracle information from ``PreferenceBatch.extras`` besides the log-probs.

Notation as ``anypo.losses.preference``: ``h_w = log pi(y_w|x) - log pi_ref(y_w|x)`` with the
batch's reference column, which the online loop (``anypo.train_pref_online``) fills with the
reference the method names (the initial policy, the previous iterate ``pi_t``, or a log-linear mix
of snapshots). Each config declares the extras it reads in ``needs_pair_extras``; each is a ``[N]``
tensor. ``L = (1/P) sum_i l_i`` with the global pair count ``P`` (micro-batch invariant).

* ``sppo``: SPPO's square loss with per-response win-rate targets (verified against the authors'
  code, uclaml/SPPO ``sppo/trainer.py::SPPOTrainer.sppo_loss``).
* ``xpo``: online DPO (or IPO) plus XPO's exploration term ``alpha log pi(y~)`` on the responses
  sampled from the reference policy (checked against TRL's ``XPOTrainer``; paper formula UNVERIFIED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from anypo.losses.preference import (
    PREFERENCE_LOSSES,
    PreferenceLossConfig,
    _finish,
    _pair_mean,
    pair_inputs,
)
from anypo.types import LossOutput, PolicyOutput, PreferenceBatch

__all__ = ["SPPO", "XPO", "pair_extra"]


def pair_extra(batch: PreferenceBatch, name: str, n: int, like: Tensor) -> Tensor:
    """``batch.extras[name]`` as an ``[n]`` tensor in ``like``'s dtype; a clear error when absent."""
    v = batch.extras.get(name)
    if v is None:
        raise ValueError(
            f"PreferenceBatch.extras[{name!r}] is missing: this loss reads it per pair (the online preference "
            "loop fills it from the oracle; anypo.train_pref_online)"
        )
    if tuple(v.shape) != (n,):
        raise ValueError(f"PreferenceBatch.extras[{name!r}] has shape {tuple(v.shape)}, expected ({n},)")
    return v.to(like.dtype)


@dataclass(frozen=True)
class SPPO(PreferenceLossConfig):
    """Self-Play Preference Optimization: regress each response's log-ratio onto its win-rate target.

    Paper: "Self-Play Preference Optimization for Language Model Alignment",
    https://arxiv.org/abs/2405.00675 (Eq. 4.7 as TRL cites it; not checked in the paper). The loss is
    the authors' code, uclaml/SPPO at 5e61c4e9, ``sppo/trainer.py::SPPOTrainer.sppo_loss``
    (``loss_type="sppo"``), per pair:

        l = 1/2 [(h_w - (p_w - 1/2) / beta)^2 + (h_l - (p_l - 1/2) / beta)^2]

    with ``h`` the log-ratio to the previous iterate ``pi_t`` (the loop's ``ref_previous`` reference)
    and ``p_w = (1/K) sum_j P(y_w > y_j)`` the chosen response's win rate among the K samples of its
    prompt (``scripts/compute_prob.py``: the sum includes ``j = w``, which contributes 1/2), likewise
    ``p_l``. ``beta = 1/eta``: the multiplicative-weights step ``pi_{t+1} ~ pi_t exp(eta P(y > pi_t))``
    with ``log Z`` approximated by ``eta / 2``. Default ``beta = 0.001`` (``scripts/pipeline.sh``).

    ``targets="pair"`` is the code's ``sppo_single``: ``p_w = P(y_w > y_l)`` and the rejected target
    ``-(P(y_w > y_l) - 1/2) / beta``. Reads ``extras["winrate_chosen"]`` / ``["winrate_rejected"]``
    (``winrate``) or ``extras["pair_prob"]`` (``pair``). With beta = 0.001 the targets are up to
    +-500 nats: the loss is large (spec: 72912.4 on its toy pair) by design; keep it float32.
    """

    beta: float = 0.001
    targets: Literal["winrate", "pair"] = "winrate"
    """winrate: each response's mean win rate over its prompt's K samples (sppo); pair: P(y_w > y_l) (sppo_single)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.targets not in ("winrate", "pair"):
            raise ValueError(f"SPPO.targets must be 'winrate' or 'pair', got {self.targets!r}")

    @property
    def needs_pair_extras(self) -> tuple[str, ...]:
        return ("winrate_chosen", "winrate_rejected") if self.targets == "winrate" else ("pair_prob",)


@PREFERENCE_LOSSES.register("sppo", config=SPPO)
def sppo(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: SPPO) -> LossOutput:
    """SPPO: ``(1/P) sum_i 1/2 [(h_w - (p_w - 1/2)/beta)^2 + (h_l - (p_l - 1/2)/beta)^2]``.

    Args:
        out_chosen / out_rejected: ``logprobs [N, T]`` (with grad).
        batch: masks, the reference column (the previous iterate), and the extras of ``cfg.needs_pair_extras``.
        cfg: ``beta`` (1 / eta) and ``targets``.

    Returns: 0-d loss and the ``pref/*`` metrics.
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    n, like = p.ratio_chosen.shape[0], p.ratio_chosen
    if cfg.targets == "winrate":
        t_w = (pair_extra(batch, "winrate_chosen", n, like) - 0.5) / cfg.beta
        t_l = (pair_extra(batch, "winrate_rejected", n, like) - 0.5) / cfg.beta
    else:
        t_w = (pair_extra(batch, "pair_prob", n, like) - 0.5) / cfg.beta
        t_l = -t_w
    per_pair = 0.5 * ((p.ratio_chosen - t_w) ** 2 + (p.ratio_rejected - t_l) ** 2)
    return _finish(_pair_mean(per_pair, batch), p, cfg.beta)


@dataclass(frozen=True)
class XPO(PreferenceLossConfig):
    """Exploratory Preference Optimization: online DPO plus an optimism term on reference samples.

    Paper: "Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for
    Sample-Efficient RLHF", https://arxiv.org/abs/2405.21046 (Algorithm 1; the paper's exact
    objective was not read: UNVERIFIED). Implemented as TRL's ``XPOTrainer._compute_losses`` (spec
    section 9): each prompt has one response from the policy and one from the reference policy
    ``y~``, ordered by the oracle, and per pair

        l = -log sigmoid(beta d)  (or IPO: (d - 1/(2 beta))^2, unnormalised)  +  alpha log pi(y~ | x)

    where ``log pi(y~|x)`` is the current policy's summed log-prob of the pair's reference sample
    (whichever side it is: ``extras["ref_sample_chosen"]`` / ``["ref_sample_rejected"]`` are 1.0 on
    that side, else 0). Minimising ``+alpha log pi(y~)`` lowers the reference samples' likelihood,
    pushing mass outside the reference's support. Defaults as TRL: beta 0.1, alpha 1e-5.
    """

    alpha: float = 1e-5
    """Weight of the exploration term (TRL's default 1e-5)."""
    base: Literal["dpo", "ipo"] = "dpo"
    """The preference loss the bonus is added to (TRL's loss_type sigmoid or ipo)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.alpha >= 0:
            raise ValueError(f"XPO.alpha must be >= 0, got {self.alpha}")
        if self.base not in ("dpo", "ipo"):
            raise ValueError(f"XPO.base must be 'dpo' or 'ipo', got {self.base!r}")

    @property
    def needs_pair_extras(self) -> tuple[str, ...]:
        return ("ref_sample_chosen", "ref_sample_rejected")


@PREFERENCE_LOSSES.register("xpo", config=XPO)
def xpo(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: XPO) -> LossOutput:
    """XPO: ``(1/P) sum_i [dpo_or_ipo(d_i) + alpha log pi(y~_i | x_i)]``.

    Args: as :func:`sppo`; the extras mark which side of each pair is the reference sample.
    Returns: 0-d loss, the ``pref/*`` metrics and ``pref/xpo_bonus`` (the alpha term's share of the loss).
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    n, like = p.logp_chosen.shape[0], p.logp_chosen
    d = p.margin
    base = -F.logsigmoid(cfg.beta * d) if cfg.base == "dpo" else (d - 1.0 / (2.0 * cfg.beta)) ** 2
    ref_c = pair_extra(batch, "ref_sample_chosen", n, like)
    ref_r = pair_extra(batch, "ref_sample_rejected", n, like)
    bonus = cfg.alpha * (ref_c * p.logp_chosen + ref_r * p.logp_rejected)
    loss = _pair_mean(base + bonus, batch)
    return _finish(loss, p, cfg.beta, {"pref/xpo_bonus": float(_pair_mean(bonus.detach(), batch))})
