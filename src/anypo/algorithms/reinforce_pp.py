"""REINFORCE++ preset."""

from __future__ import annotations

from anypo.advantages import ReinforcePPAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def reinforce_pp() -> AlgoConfig:
    """REINFORCE++: KL-in-reward token returns, global advantage whitening, PPO clip.

    "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    https://arxiv.org/abs/2501.03262: token-level k1 KL(old || ref) penalty in the reward
    (coefficient 0.01, OpenRLHF's example ``init_kl_coef``; verl's default 0.001), gamma = 1,
    batch-wide whitening, PPO clip 0.2 with token-mean aggregation (OpenRLHF).
    """
    return AlgoConfig(
        advantage=ReinforcePPAdvantage(kl_coef=0.01, gamma=1.0),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        sampler=UniformConfig(),
    )


PRESET = Preset(
    name="reinforce_pp",
    title="REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    arxiv="2501.03262",
    status="verified",
    build=reinforce_pp,
    summary="Critic-free PPO: KL-penalised token returns whitened over the whole batch.",
)
