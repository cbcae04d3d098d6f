"""PPO preset (critic + GAE)."""

from __future__ import annotations

from anypo.advantages import GAEAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import ClippedValueLoss, PPOClip
from anypo.samplers import UniformConfig


def ppo() -> AlgoConfig:
    """PPO with a learned critic: GAE advantages, clipped surrogate, clipped value loss.

    "Proximal Policy Optimization Algorithms", https://arxiv.org/abs/1707.06347, Eq. 7 and 9, with
    GAE (https://arxiv.org/abs/1506.02438) and the RLHF KL-in-reward penalty. eps = 0.2 (paper),
    value clip 0.5, gamma = 1, lambda = 0.95, KL coefficient 0.001 (verl's fixed ``kl_coef``), 4
    epochs over each batch (TRL's ``num_ppo_epochs``). The paper's Atari/MuJoCo settings
    (gamma 0.99, 3-10 epochs) do not transfer to token-level LM rewards; verl uses lambda = 1 and
    one epoch.
    """
    return AlgoConfig(
        advantage=GAEAdvantage(gamma=1.0, lam=0.95, kl_coef=0.001, whiten=True),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        value_loss=ClippedValueLoss(cliprange=0.5, aggregation="token_mean"),
        sampler=UniformConfig(),
        ppo_epochs=4,
    )


PRESET = Preset(
    name="ppo",
    title="Proximal Policy Optimization Algorithms",
    arxiv="1707.06347",
    status="verified",
    build=ppo,
    summary="Actor-critic PPO with GAE, clipped surrogate and clipped value loss.",
)
