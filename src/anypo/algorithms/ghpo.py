"""GHPO preset (adaptive partial-solution guidance on GRPO)."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.regularizers import KLPenalty
from anypo.rollout import GHPOConfig


def ghpo() -> AlgoConfig:
    """GRPO where all-wrong groups are regenerated with 25%, then 50%, then 75% of the reference
    solution in the prompt, until some sample is right.

    "GHPO: Adaptive Guidance for Stable and Efficient LLM Reinforcement Learning",
    https://arxiv.org/abs/2507.10628 (official code github.com/hkgc-1/GHPO,
    ``src/ghpo/ghpo_trainer.py``): ratios (0.25, 0.5, 0.75), character prefixes with Python
    ``round``, the whole group replaced at each stage. Loss: the code's ``GHPOConfig`` inherits TRL's
    GRPO defaults, ``loss_type="bnpo"`` (a token mean over the batch), ``epsilon=0.2``,
    ``beta=0.04`` (k3 KL to the reference).

    Deviation: a group keeps the prompt of the stage whose samples it keeps (the code reverts the
    prompt of groups solved at an earlier stage to the unhinted one while keeping the hinted
    samples, a quirk; see :class:`anypo.rollout.GHPOConfig`).
    """
    return dataclasses.replace(
        grpo(),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        regularizers=(KLPenalty(coef=0.04, estimator="k3", aggregation="token_mean"),),
        rollout=GHPOConfig(ratios=(0.25, 0.5, 0.75)),
    )


PRESET = Preset(
    name="ghpo",
    title="GHPO: Adaptive Guidance for Stable and Efficient LLM Reinforcement Learning",
    arxiv="2507.10628",
    status="verified",
    build=ghpo,
    summary="GRPO regenerating all-wrong groups with 25/50/75% of the reference solution in the prompt.",
)
