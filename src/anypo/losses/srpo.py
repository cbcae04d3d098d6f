"""SRPO: Self-Improving Robust Preference Optimization (kind ``preference_loss``), a reconstruction.

"Self-Improving Robust Preference Optimization", Choi, Ahmadian, Geist, Pietquin, Gheshlaghi Azar
(Cohere), https://arxiv.org/abs/2406.01660 (ICLR 2025). One network plays a generator ``pi(y|x)`` and a
self-improver ``pi(y'|x, y)`` (the same weights after a revision prompt ``R(x, y)``,
``anypo.losses.revision``). The abstract's objective is a KL-regularised min-max game,

    min_pi max_pi+  E_{y ~ pi(.|x), y' ~ pi+(.|x,y)} [P(y' > y | x)]
                    - beta KL(pi+(.|x,y) || pi_ref(.|x,y)) + beta KL(pi(.|x) || pi_ref(.|x)),

which the paper turns into a non-adversarial offline loss ``L_alpha`` on a fixed preference data set.
The paper's body could not be read, so the loss below is **reconstructed**:

1. Inner maximiser (standard KL-regularised argmax): ``pi+*(y'|x,y) = pi_ref(y'|x,y) exp(P(y' > y)/beta) / Z(x,y)``,
   so for any two ``y'``: ``beta [g(y'|y) - g(y''|y)] = P(y' > y) - P(y'' > y)`` with
   ``g(y'|y) = log pi+(y'|x,y) - log pi_ref(y'|x,y)``. Taking ``(y', y'') = (y_w, y_l)`` after ``y_l`` and
   after ``y_w`` (``P(y > y) = 1/2``) gives the two self-improvement targets ``p - 1/2``.
2. The inner value is ``beta log Z(x, y)``; the outer minimiser is ``pi*(y|x) ~ pi_ref(y|x) / Z(x, y)``,
   so ``beta h(y) = -beta log Z(x,y) + c = beta g(y'|y) - P(y' > y) + c``. Writing it for
   ``(y, y') = (y_w, y_l)`` and ``(y_l, y_w)`` and subtracting: ``beta [h_w - h_l + g(y_w|y_l) - g(y_l|y_w)] = 2p - 1``.
3. Both are regressed in squares (IPO-style) and mixed by ``alpha``, with hard labels ``p = 1``:

    m_l = beta [g(y_w|y_l) - g(y_l|y_l)]       (revise y_l: y_w should beat y_l by 1/2)
    m_w = beta [g(y_w|y_w) - g(y_l|y_w)]       (revise y_w: keep y_w over y_l by 1/2)
    z   = beta [h_w - h_l + g(y_w|y_l) - g(y_l|y_w)]
    l   = alpha [(m_l - 1/2)^2 + (m_w - 1/2)^2] + (1 - alpha) (z - 1)^2

This is, term for term, the loss of TRL pull request #1772 (huggingface/trl, ``trl/trainer/srpo_trainer.py::
SRPOTrainer.srpo_loss``, June 2024, closed unmerged; a third party's, not the authors' code), which was
read for the formula only; the derivation above was done independently and agrees with it, including
the signs. With ``alpha = 0`` and no revision terms it is IPO with ``tau = beta / 2``
(``(beta d - 1)^2 = beta^2 (d - 1/beta)^2``). Defaults ``beta = 0.1``, ``alpha = 0.8`` are that pull
request's (its config default and its hard-coded alpha); the paper's values are UNVERIFIED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anypo.losses.preference import PREFERENCE_LOSSES, PreferenceLossConfig, _finish, _mean, _pair_mean, pair_inputs
from anypo.losses.revision import DEFAULT_REVISION_TEMPLATE, check_revision_template, revision_ratios
from anypo.types import LossOutput, PolicyOutput, PreferenceBatch

__all__ = ["SRPO", "srpo"]


@dataclass(frozen=True)
class SRPO(PreferenceLossConfig):
    """SRPO's offline loss (reconstructed): squared self-improvement and robust-generator regressions.

    Paper: "Self-Improving Robust Preference Optimization", https://arxiv.org/abs/2406.01660 (the
    offline loss ``L_alpha``; equation number not read). Per pair, with ``h`` the generator's log-ratio
    to the reference and ``g(t|y)`` the log-ratio of response ``t`` after the revision prompt of ``y``:

        l = alpha [(beta (g(y_w|y_l) - g(y_l|y_l)) - 1/2)^2 + (beta (g(y_w|y_w) - g(y_l|y_w)) - 1/2)^2]
            + (1 - alpha) (beta (h_w - h_l + g(y_w|y_l) - g(y_l|y_w)) - 1)^2

    Reconstructed from the min-max objective of the abstract (derivation in ``anypo.losses.srpo``);
    it matches TRL pull request #1772 (third party, unmerged). Hard labels (``P(y_w > y_l) = 1``).
    Defaults ``beta = 0.1``, ``alpha = 0.8`` (that pull request's; the paper's UNVERIFIED).
    Needs the reference log-probs and the revision-conditioned log-probs (``needs_revision_logprobs``).
    """

    alpha: float = 0.8
    """Weight of the self-improvement terms; 1 - alpha weights the robust generator term."""
    revision_template: str = DEFAULT_REVISION_TEMPLATE
    """The revision prompt: {prompt} is the original user message, {response} the answer to improve."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"SRPO.alpha must be in [0, 1] (the self-improvement weight), got {self.alpha}")
        check_revision_template(self.revision_template, "SRPO")

    @property
    def needs_revision_logprobs(self) -> bool:
        return True


@PREFERENCE_LOSSES.register("srpo", config=SRPO)
def srpo(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: SRPO) -> LossOutput:
    """SRPO: ``(1/P) sum_i alpha l_SI,i + (1 - alpha) l_G,i`` (see :class:`SRPO`).

    Args:
        out_chosen: ``logprobs [N, T]`` of the chosen responses after the plain prompt (with grad).
        out_rejected: ``logprobs [N, T']`` of the rejected responses after the plain prompt (with grad).
        batch: masks, the reference column, and in ``extras`` the eight ``[N, T]`` / ``[N, T']``
            revision log-probs of ``anypo.losses.revision`` (policy with grad, reference without).
        cfg: ``beta``, ``alpha``.

    Returns:
        0-d loss; the ``pref/*`` metrics of the generator (``r = beta h``), plus
        ``pref/loss_self_improvement`` and ``pref/loss_generative`` (unweighted terms, partial sums),
        ``pref/revision_margin_given_rejected`` / ``_given_chosen`` (means of ``m_l``, ``m_w``) and
        ``pref/revision_accuracy`` (share of pairs with ``m_l > 0``: revising ``y_l``, the
        self-improver prefers ``y_w``).
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    g = revision_ratios(batch, p.logp_chosen)  # {(target, given): [N]}
    b = cfg.beta
    m_l = b * (g[("chosen", "rejected")] - g[("rejected", "rejected")])  # [N]
    m_w = b * (g[("chosen", "chosen")] - g[("rejected", "chosen")])  # [N]
    z = b * (p.margin + g[("chosen", "rejected")] - g[("rejected", "chosen")])  # [N]
    self_improvement = _pair_mean((m_l - 0.5) ** 2 + (m_w - 0.5) ** 2, batch)
    generative = _pair_mean((z - 1.0) ** 2, batch)
    loss = cfg.alpha * self_improvement + (1.0 - cfg.alpha) * generative
    out = _finish(
        loss,
        p,
        b,
        {
            "pref/loss_self_improvement": float(self_improvement.detach()),
            "pref/loss_generative": float(generative.detach()),
        },
    )
    with torch.no_grad():
        seq = {
            "pref/revision_margin_given_rejected": _mean(m_l),
            "pref/revision_margin_given_chosen": _mean(m_w),
            "pref/revision_accuracy": _mean((m_l > 0).to(m_l.dtype)),
        }
    out.metrics.update(seq)
    out.reductions.update(dict.fromkeys(seq, "seq_mean"))
    return out
