"""Prompt-difficulty curriculum preset (prime-rl's difficulty pools on GRPO)."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.samplers import CurriculumConfig


def curriculum() -> AlgoConfig:
    """GRPO with prompts drawn from difficulty pools set by each prompt's running pass rate.

    The sampler is prime-rl's difficulty-pool buffer (https://github.com/PrimeIntellect-ai/prime-rl,
    ``src/prime_rl/orchestrator/buffer.py``; defaults of ``DifficultyPoolBufferConfig``): after a
    prompt is drawn its pool is easy (pass rate >= 0.8), hard (<= 0.2) or normal, and each batch
    takes floor(0.1 B) easy, floor(0.1 B) hard and the rest normal prompts (unseen prompts are
    normal). Not a paper of its own: a curriculum users know from prime-rl (verl's counterpart is
    DAPO's dynamic sampling, preset ``dapo``). The loss is GRPO's
    (https://arxiv.org/abs/2402.03300, see the ``grpo`` preset), so a comparison with ``grpo``
    isolates the sampler. At B < 10 both shares round to 0: every prompt comes from the normal
    pool, i.e. prompts found too easy or too hard are no longer drawn.
    """
    return dataclasses.replace(grpo(), sampler=CurriculumConfig())


PRESET = Preset(
    name="curriculum",
    title="Prompt-difficulty curriculum (prime-rl difficulty pools) on GRPO",
    arxiv="",
    status="verified",
    build=curriculum,
    summary="GRPO drawing prompts from easy / normal / hard pools set by each prompt's last pass rate (prime-rl).",
)
