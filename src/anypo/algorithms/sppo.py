"""SPPO preset: per-sample win-rate targets from the oracle's K x K matrix, square loss against the previous iterate."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference_online import SPPO


def sppo(beta: float = 0.001, samples: int = 5, steps_per_iteration: int = 10, targets: str = "winrate"):
    """SPPO: ``L = 1/2 [(h_t(y_w) - (p_w - 1/2)/beta)^2 + (h_t(y_l) - (p_l - 1/2)/beta)^2]``.

    "Self-Play Preference Optimization for Language Model Alignment", https://arxiv.org/abs/2405.00675
    (Eq. 4.7 as TRL cites it). Verified against the authors' code (uclaml/SPPO at 5e61c4e9, spec
    section 2): per iteration t, K = 5 samples per prompt from ``pi_t`` (``scripts/generate.py``),
    the preference matrix ``P_ij`` (``scripts/compute_prob.py``: PairRM; here the run's oracle),
    ``y_w`` / ``y_l`` the best and worst (``prepare_score``), targets from their win rates
    ``p = (1/K) sum_j P_kj`` (self included), and ``h_t = log pi_theta - log pi_t`` against the
    previous iterate (``run_sppo.py``: the iterate is model and reference), ``beta = 0.001``
    (``scripts/pipeline.sh``; eta = 1/beta = 1000). 3 iterations (``run_sppo_*.sh``).

    Deviations: the oracle replaces PairRM; best / worst are by win rate (for a Bradley-Terry oracle
    the same as by score); the iteration is ``steps_per_iteration`` steps of fresh prompts sampled
    from ``pi_t`` (the repo generates one dataset per iteration and trains one epoch on it), 10 by
    default so 30 steps are 3 iterations; AdamW instead of RMSprop; optimizer state kept across
    iterations. ``targets="pair"`` is the code's ``sppo_single``.

    Args:
        beta: 1/eta.
        samples: K.
        steps_per_iteration: optimizer steps per iteration.
        targets: ``winrate`` (sppo) or ``pair`` (sppo_single).

    Returns:
        The ``OnlinePrefAlgoConfig`` of the online preference loop.
    """
    from anypo.train_pref_online import OnlinePrefAlgoConfig

    return OnlinePrefAlgoConfig(
        loss=SPPO(beta=beta, targets=targets), samples_per_prompt=samples, pairing="best_worst",
        sample_from="iterate", ref_initial=0.0, ref_previous=1.0, steps_per_iteration=steps_per_iteration,
    )  # fmt: skip


PRESET = Preset(
    name="sppo",
    title="Self-Play Preference Optimization for Language Model Alignment",
    arxiv="2405.00675",
    status="verified",
    build=sppo,
    summary="K=5 samples per prompt from pi_t, best/worst with their oracle win rates as square-loss targets (beta 0.001) against pi_t.",
    kind="preference_online",
)
