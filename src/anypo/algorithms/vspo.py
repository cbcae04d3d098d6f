"""VSPO preset: value-based refills of zero-advantage groups with progressive reward shaping (PRS)."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.rollout import ProgressiveRewardConfig
from anypo.samplers import ValueSamplingConfig


def vspo() -> AlgoConfig:
    """GRPO where groups with zero advantage are dropped and the step is refilled with prompts drawn by
    task value (difficulty and uncertainty), on a staged reward (format first, then correctness).

    "VSPO / PRS: Progressive Reward Shaping and Value-based Sampling Policy Optimization",
    https://arxiv.org/abs/2512.07478 (agentic tool-integrated RL). Reconstructed from the abstract
    only: the task value ``0.5 (1 - p) + 0.5 * 4 p (1 - p)``, up to 3 draws per step, the format stage
    of 5 steps and the 0.2 format share are UNVERIFIED (see :class:`anypo.samplers.ValueSamplingConfig`,
    :class:`anypo.rollout.ProgressiveRewardConfig`); the value-smoothing clipping, the length-aware
    BLEU and the LLM judge are not reproduced. Loss: GRPO's (preset ``grpo``).
    """
    return dataclasses.replace(
        grpo(),
        sampler=ValueSamplingConfig(max_draws=3, lam=0.5),
        rollout=ProgressiveRewardConfig(format_steps=5, format_weight=0.2),
    )


PRESET = Preset(
    name="vspo",
    title="Progressive Reward Shaping and Value-based Sampling Policy Optimization",
    arxiv="2512.07478",
    status="reconstructed",
    build=vspo,
    summary="GRPO refilling zero-advantage groups with high-value prompts, on a format-then-correctness reward.",
)
