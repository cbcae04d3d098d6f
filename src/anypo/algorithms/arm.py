"""ARM preset (ProGRPO: GRPO with confidence-reweighted advantages)."""

from __future__ import annotations

import dataclasses

from anypo.advantages import ARMAdvantage
from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset


def arm(alpha: float = 0.5, low_frac: float = 0.2) -> AlgoConfig:
    """ProGRPO: the ``grpo`` preset with ARM's advantage ``A_i + alpha (c(q) - c(o_i | q))``.

    "Back to Basics: Revisiting Exploration in Reinforcement Learning for LLM Reasoning via Generative
    Probabilities", https://arxiv.org/abs/2602.05281. The advantage's outer form is from a review of
    the paper; the confidences (``c(q)`` = 1 / prompt perplexity under the behaviour policy, ``c(o|q)``
    = exp of the mean of the answer's lowest 20% token log-probs), ``alpha = 0.5`` and the rest of the
    recipe (GRPO's PPO clip 0.2, k3 KL 0.04, per-sequence token mean) are UNVERIFIED (see
    :class:`anypo.advantages.ARMAdvantage`). Not included: the paper's low-probability token length
    normalisation of the loss, of which only a one-line summary could be read.

    Args:
        alpha: weight of the confidence shift.
        low_frac: share of an answer's lowest-probability tokens its confidence is computed from.
    """
    return dataclasses.replace(grpo(), advantage=ARMAdvantage(alpha=alpha, low_frac=low_frac))


PRESET = Preset(
    name="arm",
    title="Back to Basics: Revisiting Exploration in Reinforcement Learning for LLM Reasoning via Generative Probabilities",
    arxiv="2602.05281",
    status="reconstructed",
    build=arm,
    summary="ProGRPO: GRPO advantages + alpha (prompt confidence - answer confidence) in groups with a correct answer.",
)
