"""ExPO preset (ExP-GRPO): GRPO with answer-conditioned self-explanations as positives and their SFT term."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.regularizers import ExPOSFT
from anypo.rollout import SelfExplainConfig


def expo() -> AlgoConfig:
    """ExP-GRPO: a group with no correct sample gets a self-explanation (the policy's own answer
    written with the gold answer shown) in place of its last sample, trained under the plain prompt,
    plus ``-0.1 log pi(c | q)`` on it.

    "ExPO: Unlocking Hard Reasoning with Self-Explanation-Guided Reinforcement Learning",
    https://arxiv.org/abs/2507.02834 (NeurIPS 2025). Reconstructed from the abstract and a summary
    (the code was not located): the template, one explanation per all-wrong group, keeping only
    explanations that end with the right answer, entering the GRPO group, the SFT coefficient 0.1 and
    its normalisation are UNVERIFIED (see :class:`anypo.rollout.SelfExplainConfig`,
    :class:`anypo.regularizers.ExPOSFT`). GRPO loss and KL as the ``grpo`` preset.
    """
    base = grpo()
    return dataclasses.replace(
        base,
        regularizers=(*base.regularizers, ExPOSFT(coef=0.1)),
        rollout=SelfExplainConfig(explanations=1, only_unsolved=True, require_correct=True),
    )


PRESET = Preset(
    name="expo",
    title="ExPO: Unlocking Hard Reasoning with Self-Explanation-Guided Reinforcement Learning",
    arxiv="2507.02834",
    status="reconstructed",
    build=expo,
    summary="GRPO where all-wrong groups get an answer-conditioned self-explanation as a positive, plus its SFT term.",
)
