"""IPO preset (identity preference optimisation)."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference import IPO


def ipo(tau: float = 0.1, length_normalize: bool = False):
    """IPO: regress the log-ratio margin onto ``1/(2 tau)``: ``L = (1/P) sum_i (h_w - h_l - 1/(2 tau))^2``.

    "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    https://arxiv.org/abs/2310.12036, Eq. 17: ``E[(h_pi(y_w, y_l) - tau^-1 / 2)^2]`` with
    ``h_pi(y, y') = log pi(y) pi_ref(y') / (pi(y') pi_ref(y))`` (sequence log-probs). Checked
    against the DPO authors' code (eric-mitchell/direct-preference-optimization at f8b8c0f,
    ``trainers.py::preference_loss(ipo=True)``, summed log-probs) and TRL's ``loss_type="ipo"``.

    Defaults and deviations: the paper's experiments are bandits and give no tau for language
    models; tau = 0.1 is TRL's default (passed as ``beta`` of the loss). ``length_normalize=False``
    is Eq. 17 as printed (and the reference code); TRL's ``ipo`` always divides each log-ratio by
    its response length first, which ``length_normalize=True`` (``--algo.loss.length-normalize True``) gives.

    Args:
        tau: the regulariser tau (target margin ``1/(2 tau)`` nats).
        length_normalize: per-token log-ratios (TRL) instead of sequence sums (Eq. 17).

    Returns:
        The ``PrefAlgoConfig`` of the preference loop.
    """
    from anypo.train_pref import PrefAlgoConfig

    return PrefAlgoConfig(loss=IPO(beta=tau, length_normalize=length_normalize))


PRESET = Preset(
    name="ipo",
    title="A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arxiv="2310.12036",
    status="verified",
    build=ipo,
    summary="Offline pairs, squared loss (h_w - h_l - 1/(2 tau))^2 toward a finite margin, tau 0.1 (Eq. 17).",
    kind="preference",
)
