"""RTO preset: PPO whose token-level reward is the DPO policy's clipped log-ratio plus the sentence reward."""

from __future__ import annotations

from anypo.advantages import GAEAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import ClippedValueLoss, PPOClip
from anypo.rollout.rto import RTOTokenRewardConfig
from anypo.samplers import UniformConfig


def rto(dpo_model: str = "", beta1: float = 0.05, clip: float = 0.05, kl_coef: float = 0.01) -> AlgoConfig:
    """RTO (Reinforced Token Optimization), stage 2: PPO with RTO's dense token reward.

    "DPO Meets PPO: Reinforced Token Optimization for RLHF", https://arxiv.org/abs/2404.18922.
    Verified against the authors' code, zkshan2002/RTO at f2c12948 (spec section 7): per token
    ``r_k = clip(beta1 (log pi_dpo - log pi_ref), -c, c) - beta2 (log pi_theta - log pi_ref)`` plus the
    sentence reward on the last token, GAE (gamma 1, lambda 0.95) with a critic, PPO-clip 0.2, value
    clip 0.2, one PPO epoch; ``examples/scripts/train_rto_llama_8b.sh``: beta1 = ``dpo_reward_scale``
    0.05, c = ``dpo_reward_clip`` 0.05, beta2 = ``init_kl_coef`` 0.01 (fixed). The rollout part
    ``rto_token_reward`` sets the first term as ``batch.token_rewards``; the ``gae`` advantage adds
    the k1 KL penalty and the task reward on the last token.

    Two stages: train ``pi_dpo`` first (``anypo train dpo``) and pass its ``final/`` directory as
    ``--algo.rollout.dpo-model``; without it the initial policy stands in (a zero DPO reward, PPO
    with the KL penalty only: what ``--smoke`` runs).

    Deviations: the sentence reward is the task's verifiable reward (in [0, 1.1]; the code's reward
    model output is normalised with running statistics and clamped to [-10, 10]: not done here); the
    critic starts from the policy's backbone (the code initialises it from the reward model); the
    advantages are whitened as in the ``ppo`` preset; the DPO / reference log-probs are at
    temperature 1.

    Args:
        dpo_model: the stage-1 DPO policy's directory ("" for none).
        beta1: scale of the DPO token reward.
        clip: per-token clip of the DPO token reward.
        kl_coef: beta2, the k1 KL coefficient in the reward.

    Returns:
        The ``AlgoConfig`` of the online RL loop.
    """
    return AlgoConfig(
        advantage=GAEAdvantage(gamma=1.0, lam=0.95, kl_coef=kl_coef, whiten=True),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        value_loss=ClippedValueLoss(cliprange=0.2, aggregation="token_mean"),
        sampler=UniformConfig(),
        rollout=RTOTokenRewardConfig(dpo_model=dpo_model, beta1=beta1, clip=clip),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="rto",
    title="DPO Meets PPO: Reinforced Token Optimization for RLHF",
    arxiv="2404.18922",
    status="verified",
    build=rto,
    summary="PPO + GAE with token rewards clip(0.05 (log pi_dpo - log pi_ref), +-0.05) - 0.01 KL, plus the task reward at the end.",
)
