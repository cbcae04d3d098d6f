"""PRS: progressive (staged) reward shaping, applied to a scored batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from anypo.rollout.groups import Request
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.samplers.stats import correctness
from anypo.types import PartConfig, RolloutBatch

__all__ = ["ProgressiveReward", "ProgressiveRewardConfig", "staged_reward"]


@dataclass(frozen=True)
class ProgressiveRewardConfig(PartConfig):
    """Progressive reward shaping (PRS): format first, then correctness.

    Paper: "VSPO / PRS: Progressive Reward Shaping and Value-based Sampling Policy Optimization",
    https://arxiv.org/abs/2512.07478. RECONSTRUCTED from the abstract only (no code found): the reward
    is staged, curriculum-like: the model is first rewarded for a parseable, correctly formatted
    answer (tool calls in the paper) and only then for correctness. Ours (UNVERIFIED), from each
    row's reward components: ``f`` = the ``format_key`` term (1 when the answer is parseable), ``c``
    = correctness;

    * steps ``<= format_steps`` (the format stage): ``r = f``;
    * later (the answer stage): ``r = format_weight f + (1 - format_weight) f c`` (correctness counts
      only in a well-formed answer).

    The paper's length-aware BLEU (short-form QA) and LLM judge (long-form) are not reproduced: the
    tasks here have verifiable answers. Rows whose components lack ``format_key`` keep their reward.
    """

    format_steps: int = 5
    """Steps of the format stage."""
    format_weight: float = 0.2
    """Share of the reward a well-formed answer gets in the answer stage."""
    format_key: str = "format"
    """Reward component that says whether the answer is well-formed."""

    def __post_init__(self) -> None:
        if self.format_steps < 0 or not 0.0 <= self.format_weight <= 1.0:
            raise ValueError(
                f"need format_steps >= 0 and 0 <= format_weight <= 1, got {self.format_steps}, {self.format_weight}"
            )


def staged_reward(fmt: float, correct: float, step: int, cfg: ProgressiveRewardConfig) -> float:
    """The PRS reward of one row (see :class:`ProgressiveRewardConfig`)."""
    f = float(fmt >= 1.0)
    if step <= cfg.format_steps:
        return f
    return cfg.format_weight * f + (1.0 - cfg.format_weight) * f * float(correct >= 1.0)


@ROLLOUTS.register("progressive_reward", config=ProgressiveRewardConfig)
class ProgressiveReward(RolloutPart):
    """Rewrites the batch's rewards with PRS (see :class:`ProgressiveRewardConfig`)."""

    cfg: ProgressiveRewardConfig

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        batch = self.groups.collect(requests, seed, group_offset)
        comps, right = batch.extras["components"], correctness(batch)
        new = [
            staged_reward(c[self.cfg.format_key], ok, step, self.cfg) if self.cfg.format_key in c else float(r)
            for c, ok, r in zip(comps, right, batch.rewards.tolist(), strict=True)
        ]
        batch.rewards = torch.tensor(new, dtype=batch.rewards.dtype)
        self.metrics["rollout/prs_format_stage"] = float(step <= self.cfg.format_steps)  # 1 in the format stage
        return batch
