"""DR-PO preset (Dataset Reset Policy Optimization) on PPO with a critic."""

from __future__ import annotations

from anypo.advantages import GAEAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import ClippedValueLoss, PPOClip
from anypo.rollout import DatasetResetConfig
from anypo.samplers import UniformConfig


def drpo_reset() -> AlgoConfig:
    """PPO whose rollouts start from a random prefix of the reference response (a teacher-forced
    roll-in, masked out of the loss) and continue freely.

    "Dataset Reset Policy Optimization for RLHF", https://arxiv.org/abs/2404.08495 (the code's
    ``Args`` defaults, github.com/Cornell-RL/drpo ``src/tldr/drpo.py``): ``beta = 1`` (every sample
    reset), roll-in length uniform on ``{1, ..., L_ref - 1}``; PPO with 4 epochs, clip 0.2, value clip
    0.2, value coefficient 0.1, gamma 1, lambda 0.95, whitened advantages, KL penalty 0.05 in the
    reward. The paper's reward is a learned reward model on TL;DR; here the task's reward scores the
    whole response (roll-in included). Run settings of the paper not in this config: temperature 0.7,
    response length 53, lr 3e-6. Deviations (see :class:`anypo.rollout.DatasetResetConfig`): the
    KL penalty and the value loss act on generated tokens only; the continuation gets the full
    ``max_new_tokens``.
    """
    return AlgoConfig(
        advantage=GAEAdvantage(gamma=1.0, lam=0.95, kl_coef=0.05, whiten=True),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        value_loss=ClippedValueLoss(cliprange=0.2, coef=0.1, aggregation="token_mean"),
        sampler=UniformConfig(),
        rollout=DatasetResetConfig(beta=1.0),
        ppo_epochs=4,
    )


PRESET = Preset(
    name="drpo_reset",
    title="Dataset Reset Policy Optimization for RLHF",
    arxiv="2404.08495",
    status="verified",
    build=drpo_reset,
    summary="PPO rolling out from random prefixes of the reference response; the roll-in is masked out of the loss.",
)
