"""Online DPO preset: two fresh samples per prompt each step, ordered by the oracle, DPO against the fixed reference."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference import DPO, IPO


def online_dpo(beta: float = 0.1, loss: str = "dpo"):
    """Online DPO: every step, 2 samples of the current policy per prompt, judged, DPO (or IPO) loss.

    "Direct Language Model Alignment from Online AI Feedback", https://arxiv.org/abs/2402.04792
    (Guo et al., OAIF): per prompt sample ``y1, y2 ~ pi_theta(.|x)``, ask the annotator (here the
    run's preference oracle) which is better, and take one step on
    ``-log sigmoid(beta (h(y_w) - h(y_l)))`` with ``h = log pi_theta - log pi_ref`` and ``pi_ref``
    the frozen initial policy (spec section 1.3). Checked against TRL's ``OnlineDPOTrainer``
    (``trl/experimental/online_dpo``; a third-party implementation, the authors released no code):
    beta 0.1, sampling temperature 0.9, 64 new tokens (the loop's ``--sampling`` defaults), lr 5e-7
    there (the loop's ``--lr``, default 1e-6 at this scale).

    Deviations: a pair the oracle scores as a tie (both responses equally good, e.g. both wrong
    under hard labels) is dropped and counted (``data/tied_prompts``); TRL orders a tie by index.
    The optional missing-EOS penalty of TRL is not applied (a truncated response is judged as is).

    Args:
        beta: DPO's beta (IPO's tau with ``loss="ipo"``).
        loss: ``dpo`` (sigmoid) or ``ipo`` (unnormalised, as TRL's online trainer).

    Returns:
        The ``OnlinePrefAlgoConfig`` of the online preference loop.
    """
    from anypo.train_pref_online import OnlinePrefAlgoConfig

    if loss not in ("dpo", "ipo"):
        raise ValueError(f"online_dpo: loss must be 'dpo' or 'ipo', got {loss!r}")
    part = DPO(beta=beta) if loss == "dpo" else IPO(beta=beta, length_normalize=False)
    return OnlinePrefAlgoConfig(loss=part, samples_per_prompt=2, pairing="two", sample_from="policy")


PRESET = Preset(
    name="online_dpo",
    title="Direct Language Model Alignment from Online AI Feedback",
    arxiv="2402.04792",
    status="verified",
    build=online_dpo,
    summary="Each step 2 samples per prompt from the policy, ordered by the oracle, DPO (beta 0.1) against the fixed initial policy.",
    kind="preference_online",
)
