"""DPO preset (offline preference optimisation, the sigmoid loss)."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference import DPO


def dpo(beta: float = 0.1):
    """DPO: ``L = -(1/P) sum_i log sigmoid(beta (h_w - h_l))`` on fixed preference pairs.

    "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    https://arxiv.org/abs/2305.18290, Eq. 7:
    ``L_DPO = -E[log sigmoid(beta log pi(y_w|x)/pi_ref(y_w|x) - beta log pi(y_l|x)/pi_ref(y_l|x))]``,
    with ``log pi(y|x)`` the sum over response tokens and ``pi_ref`` the frozen initial policy.
    Checked against the authors' code (eric-mitchell/direct-preference-optimization at f8b8c0f,
    ``trainers.py::preference_loss`` with ``label_smoothing=0``) and TRL's ``loss_type="sigmoid"``.
    Appendix B: beta = 0.1, batch 64 pairs, RMSprop lr 1e-6 with a linear warm-up over 150 steps
    (the loop's ``pairs_per_step``, ``lr``, ``warmup_steps``).

    Deviations: AdamW instead of RMSprop (the loop's optimizer, as TRL's default); the reference
    log-probs are computed once with the initial weights and cached (the same values, one pass).

    Args:
        beta: the KL strength (scale of the implicit reward ``beta h``).

    Returns:
        The ``PrefAlgoConfig`` of the preference loop.
    """
    from anypo.train_pref import PrefAlgoConfig

    return PrefAlgoConfig(loss=DPO(beta=beta))


PRESET = Preset(
    name="dpo",
    title="Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    arxiv="2305.18290",
    status="verified",
    build=dpo,
    summary="Offline pairs, -log sigmoid(beta (h_w - h_l)) against the frozen initial policy, beta 0.1.",
    kind="preference",
)
