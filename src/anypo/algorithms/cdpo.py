"""cDPO preset (conservative DPO: the DPO loss with label smoothing)."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference import CDPO


def cdpo(beta: float = 0.1, label_smoothing: float = 0.1):
    """cDPO: DPO with preference labels assumed flipped with probability eps.

    E. Mitchell, "A note on DPO with noisy preferences & relationship to IPO" (2023 note, not on
    arXiv: https://ericmitchell.ai/cdpo.pdf), Eq. 3, on the DPO loss of
    https://arxiv.org/abs/2305.18290 (Eq. 7):
    ``l = -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)``, ``d = h_w - h_l``; its gradient
    vanishes where the implicit preference probability ``sigmoid(beta d)`` reaches ``1 - eps``.
    Checked against the note's code (eric-mitchell/direct-preference-optimization at f8b8c0f,
    ``trainers.py::preference_loss``, "Eq. 3 https://ericmitchell.ai/cdpo.pdf") and TRL before
    its DPO refactor (``loss_type="sigmoid"`` with ``label_smoothing``).

    Defaults: beta 0.1 (DPO's); eps 0.1, the starting point the author's README suggests ("Starting
    with something like 0.1 might be reasonable, but I haven't tested this yet"); the note itself
    gives no value.

    Args:
        beta: the KL strength.
        label_smoothing: eps in [0, 0.5), the assumed label-flip rate (0 is DPO).

    Returns:
        The ``PrefAlgoConfig`` of the preference loop.
    """
    from anypo.train_pref import PrefAlgoConfig

    return PrefAlgoConfig(loss=CDPO(beta=beta, label_smoothing=label_smoothing))


PRESET = Preset(
    name="cdpo",
    title="A note on DPO with noisy preferences & relationship to IPO",
    arxiv="",
    status="verified",
    build=cdpo,
    summary="DPO with label smoothing eps 0.1 (E. Mitchell's note, https://ericmitchell.ai/cdpo.pdf; not on arXiv).",
    kind="preference",
)
