"""ARPO preset (experience replay of successes into all-failing groups, with task filtering), on GRPO."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.rollout import ExperienceReplayConfig
from anypo.samplers import TaskFilterConfig


def replay() -> AlgoConfig:
    """GRPO with ARPO's per-task replay: a group whose samples all fail gets the prompt's most recent
    stored success in place of one sample; training prompts are filtered by the starting policy's
    outcomes (kept when it solves some but not all of 8 samples).

    "ARPO: End-to-End Policy Optimization for GUI Agents with Experience Replay",
    https://arxiv.org/abs/2505.16282. Reconstructed from the abstract and summaries (the stored fork
    of the official code has the buffer class but its use commented out): the buffer (one success per
    prompt, newest, up to 4096 prompts), which sample is replaced (the last), the filter's thresholds
    (0 < pass rate < 1 over 8 samples of a 128-prompt pool) are UNVERIFIED (see
    :class:`anypo.rollout.ExperienceReplayConfig`, :class:`anypo.samplers.TaskFilterConfig`). The
    old log-probs of every batch are recomputed by the learner (as ARPO's trainer does), so a
    replayed sample's ratio starts at 1. Loss: GRPO's (preset ``grpo``; ARPO is GRPO on multi-turn
    GUI trajectories, single-turn here).
    """
    return dataclasses.replace(grpo(), sampler=TaskFilterConfig(), rollout=ExperienceReplayConfig())


PRESET = Preset(
    name="replay",
    title="ARPO: End-to-End Policy Optimization for GUI Agents with Experience Replay",
    arxiv="2505.16282",
    status="reconstructed",
    build=replay,
    summary="GRPO replaying a prompt's stored success into its all-failing groups, on baseline-filtered prompts.",
)
