"""GDRO preset (Prompt-GDRO and Rollout-GDRO on GRPO)."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.samplers import GDROConfig


def gdro() -> AlgoConfig:
    """GRPO whose prompts are drawn by a multiplicative-weights adversary over online pass@k bins
    (Prompt-GDRO) and whose group sizes follow a square-root rule at G samples per prompt on average
    (Rollout-GDRO, compute-neutral).

    "Group Distributionally Robust Optimization-Driven Reinforcement Learning for LLM Reasoning",
    https://arxiv.org/abs/2601.19280. Reconstructed from the abstract and reviews (no code found):
    the bin edges (0.25 / 0.5 / 0.75 of a 4-draw moving pass@k), hysteresis 0.05, eta 0.5, EMA 0.9,
    10% uniform exploration, the variance proxy sqrt(p (1 - p)) of the bin's pass rate, group sizes
    in [2, 2G] are UNVERIFIED (see :class:`anypo.samplers.GDROConfig`). The paper runs the two
    adversaries as separate methods; this preset runs both (``--algo.sampler.rollout-adversary
    False`` gives Prompt-GDRO alone, ``--algo.sampler.prompt-adversary False`` Rollout-GDRO alone).
    Loss: GRPO's (preset ``grpo``), the paper's baseline.
    """
    return dataclasses.replace(grpo(), sampler=GDROConfig())


PRESET = Preset(
    name="gdro",
    title="Group Distributionally Robust Optimization-Driven Reinforcement Learning for LLM Reasoning",
    arxiv="2601.19280",
    status="reconstructed",
    build=gdro,
    summary="GRPO with prompts drawn by a bin adversary and group sizes by a square-root rule at a fixed mean.",
)
