"""Scaf-GRPO preset (tiered in-prompt hints for unsolved groups on GRPO)."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.rollout import ScafConfig


def scaf_grpo() -> AlgoConfig:
    """GRPO where every all-wrong group after the warm-up gets one hinted sample per hint level; the
    first correct one (lowest level) replaces the group's first sample, with its hinted prompt.

    "Scaf-GRPO: Scaffolded Group Relative Policy Optimization for Enhancing LLM Reasoning",
    https://arxiv.org/abs/2510.19807 (official code github.com/dvlab-research/Scaf-GRPO,
    ``hint_mix_grpo/trainer/ray_trainer.py``): ``replace_num = 1``, up to 8 levels, the hinted
    sample trained as on-policy for its hinted prompt; GRPO loss (the code is verl's GRPO).

    Deviations: ``warmup_steps = 5`` (the code's script: 50 of a run of hundreds of steps; our runs
    have 30); the hint levels are the task's own ladder (``Example.hints``: method hints, then
    solution steps), not the paper's offline-generated knowledge / planning / solution tiers. The
    diagnosis of stagnation is the code's: past the warm-up and every sample wrong. The paper's
    three tiers and any longer-window plateau test are UNVERIFIED in the code we read.
    """
    return dataclasses.replace(grpo(), rollout=ScafConfig(warmup_steps=5, max_levels=8, replace_num=1))


PRESET = Preset(
    name="scaf_grpo",
    title="Scaf-GRPO: Scaffolded Group Relative Policy Optimization for Enhancing LLM Reasoning",
    arxiv="2510.19807",
    status="verified",
    build=scaf_grpo,
    summary="GRPO rescuing all-wrong groups with one hinted sample from the weakest hint that works.",
)
