"""MMR1's variance-aware sampling preset (VAS on GRPO)."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.samplers import VASConfig


def vas() -> AlgoConfig:
    """GRPO with variance-aware sampling: half of each batch drawn by the variance promotion score.

    "MMR1: Enhancing Multimodal Reasoning with Variance-Aware Sampling and Open Resources",
    https://arxiv.org/abs/2509.21268, Alg. 1 (official code github.com/LengSicong/MMR1,
    ``verl/curriculum``): every ``T_update`` steps each prompt gets N rollouts;
    ``VPS = alpha P(1-P) + beta distinct-3``, min-max normalised over the prompts; a batch is
    ``floor(lambda B)`` prompts drawn with replacement by weight and the rest uniform. Defaults: the
    paper's main ``alpha = 0.8, beta = 0.2, lambda = 0.5``; the code example's ``N = 8``,
    ``T_update = 4`` and momentum 0 (the paper's T_update of 351 steps exceeds our runs).

    Deviation: VAS scores a seeded pool of 128 training prompts (the paper: the whole dataset), so
    that a re-scoring costs 128 x 8 generations, not 10,000 x 8. Each re-scoring's tokens count in
    ``rollout/generated_tokens`` (compare at equal tokens). The loss is GRPO's (preset ``grpo``);
    MMR1 trains with its own GRPO settings on multimodal data (not reproduced).
    """
    return dataclasses.replace(grpo(), sampler=VASConfig(pool=128))


PRESET = Preset(
    name="vas",
    title="MMR1: Enhancing Multimodal Reasoning with Variance-Aware Sampling and Open Resources",
    arxiv="2509.21268",
    status="verified",
    build=vas,
    summary="GRPO drawing half of each batch by the variance promotion score, re-scored every 4 steps.",
)
