"""Iterative DPO preset: K samples per prompt from the iterate, best vs worst under the oracle, DPO per iteration."""

from __future__ import annotations

from anypo.config import Preset
from anypo.losses.preference import DPO


def iterative_dpo(beta: float = 0.1, samples: int = 8, steps_per_iteration: int = 10, reference: str = "fixed"):
    """Iterative (batch-online) DPO: per iteration t, sample K responses per prompt from ``pi_t``, pair
    the oracle's best with its worst, and train DPO from ``pi_t``.

    "RLHF Workflow: From Reward Modeling to Online RLHF", https://arxiv.org/abs/2405.07863 (Dong et
    al.), the baseline of SPPO, INPO and APO (spec section 1.3):
    ``L = -log sigmoid(beta (h(y_best) - h(y_worst)))``, ``h`` the log-ratio to the reference.
    Verified against the authors' code, RLHFlow/Online-RLHF at 138f5278: ``run_loop.sh`` runs 3
    iterations, each generating K = 8 responses per prompt at temperature 1.0 with the current
    iterate (``generation/gen_hf.py``), scoring them with the reward model and training DPO from the
    iterate with ``--choose_type max_min`` (best vs worst reward; a pair of equal rewards is skipped,
    ``dpo_iteration/run_dpo.py::prepare_data``), ``--ref_model`` the initial model (a fixed
    reference), ``loss_type sigmoid`` (TRL's default beta 0.1), lr 5e-7, cosine schedule.
    ``run_loop2.sh`` is the variant with the iterate as the reference, K = 4 and label smoothing 0.1:
    ``reference="previous_iterate"`` (the SPPO repo also uses the iterate as reference).

    Deviations: the oracle replaces the reward model (best / worst by win rate among the K samples:
    for a Bradley-Terry oracle the same as by score); an iteration is ``steps_per_iteration`` steps
    of fresh prompts sampled from ``pi_t`` (the code generates one dataset per iteration, then
    trains on it), 10 by default so 30 steps are 3 iterations; the optimizer state carries across
    iterations; sampling temperature is the loop's ``--sampling.temperature`` (0.9 by default; the
    code's 1.0).

    Args:
        beta: DPO's beta.
        samples: K, responses per prompt.
        steps_per_iteration: optimizer steps per iteration.
        reference: ``fixed`` (pi_1, run_loop.sh) or ``previous_iterate`` (pi_t, run_loop2.sh).

    Returns:
        The ``OnlinePrefAlgoConfig`` of the online preference loop.
    """
    from anypo.train_pref_online import OnlinePrefAlgoConfig

    if reference not in ("previous_iterate", "fixed"):
        raise ValueError(f"iterative_dpo: reference must be 'fixed' or 'previous_iterate', got {reference!r}")
    prev = reference == "previous_iterate"
    return OnlinePrefAlgoConfig(
        loss=DPO(beta=beta), samples_per_prompt=samples, pairing="best_worst", sample_from="iterate",
        ref_initial=0.0 if prev else 1.0, ref_previous=1.0 if prev else 0.0, steps_per_iteration=steps_per_iteration,
    )  # fmt: skip


PRESET = Preset(
    name="iterative_dpo",
    title="RLHF Workflow: From Reward Modeling to Online RLHF",
    arxiv="2405.07863",
    status="verified",
    build=iterative_dpo,
    summary="Per iteration: K=8 samples per prompt from pi_t, oracle best vs worst, DPO (beta 0.1) against the fixed pi_1.",
    kind="preference_online",
)
