"""XPO preset: online DPO on a policy sample vs a reference sample, plus alpha log pi of the reference sample."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference_online import XPO


def xpo(beta: float = 0.1, alpha: float = 1e-5, loss: str = "dpo"):
    """XPO: ``L = -log sigmoid(beta (h(y_w) - h(y_l))) + alpha log pi_theta(y~ | x)``.

    "Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for Sample-Efficient
    RLHF", https://arxiv.org/abs/2405.21046. As TRL's ``XPOTrainer`` (spec section 9): per prompt and
    step one response of the policy and one ``y~`` of the reference policy (the frozen initial
    model), ordered by the oracle; DPO (or IPO) on the pair against the fixed reference plus
    ``alpha`` times the policy's summed log-prob of ``y~``, which lowers the reference samples'
    likelihood (optimism: mass moves outside the reference's support). TRL defaults: beta 0.1,
    alpha 1e-5 (temperature 0.9, 64 new tokens: the loop's ``--sampling``).

    Status reconstructed: the paper's objective (spec: ``alpha sum_i log pi(y~_i) - sum log sigmoid(...)``
    over the growing dataset) was not read; the implementation follows TRL (a third-party
    implementation). Deviation: a tie under the oracle drops the pair (TRL prefers the policy sample
    on ties).

    Args:
        beta: DPO's beta (IPO's tau).
        alpha: weight of the exploration term.
        loss: ``dpo`` or ``ipo``.

    Returns:
        The ``OnlinePrefAlgoConfig`` of the online preference loop.
    """
    from anypo.train_pref_online import OnlinePrefAlgoConfig

    return OnlinePrefAlgoConfig(
        loss=XPO(beta=beta, alpha=alpha, base=loss), samples_per_prompt=1, pairing="policy_vs_reference",
        sample_from="policy",
    )  # fmt: skip


PRESET = Preset(
    name="xpo",
    title="Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for Sample-Efficient RLHF",
    arxiv="2405.21046",
    status="reconstructed",
    build=xpo,
    summary="Policy sample vs reference sample each step, oracle-ordered, DPO (beta 0.1) + alpha (1e-5) log pi of the reference sample.",
    kind="preference_online",
)
