"""IcePop preset: GRPO with IcePop's rollout correction."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.losses.common import icepop as icepop_correction


def icepop(alpha: float = 0.5, beta: float = 5.0) -> AlgoConfig:
    """GRPO whose clipped surrogate is weighted by IcePop's masked engine/learner ratio.

    "Every Step Evolves: Scaling Reinforcement Learning for Trillion-Scale Thinking Model" (Ling Team,
    Ring-1T), https://arxiv.org/abs/2510.18855, the IcePop objective: with
    ``k_it = pi_train(y_it; theta_old) / pi_infer(y_it; theta_old)`` (the learner's and the inference
    engine's probability of the sampled token under the same weights),
    ``J = E[(1/G) sum_i (1/|y_i|) sum_t M(k_it) min(r_it A_i, clip(r_it, 1 - eps, 1 + eps) A_i) - KL]``,
    ``M(k) = k`` for ``alpha <= k <= beta`` and 0 otherwise: tokens whose engine and learner disagree
    too much are dropped, the rest are importance-weighted. Everything else is the ``grpo`` preset
    (group z-score advantage, eps 0.2, k3 KL 0.04, seq-mean-token-mean). The band [0.5, 5.0] is
    OpenRLHF's default for ``--use_icepop`` and the one quoted for IcePop by its authors' follow-up
    notes; the paper's own values were not read (UNVERIFIED). verl implements it as a two-sided
    ``rollout_is_threshold``. The loop recomputes the old log-probs with the learner and keeps the
    engine's (``needs_rollout_logprobs``); with the fp32 HF engine they agree and ``M(k) = 1``.

    Args:
        alpha: lower bound of the accepted engine/learner ratio.
        beta: upper bound.
    """
    base = grpo()
    return dataclasses.replace(
        base, policy_loss=dataclasses.replace(base.policy_loss, **icepop_correction(alpha, beta))
    )


PRESET = Preset(
    name="icepop",
    title="Every Step Evolves: Scaling Reinforcement Learning for Trillion-Scale Thinking Model",
    arxiv="2510.18855",
    status="verified",
    build=icepop,
    summary="GRPO with IcePop: tokens whose engine/learner probability ratio leaves [0.5, 5] are masked.",
)
