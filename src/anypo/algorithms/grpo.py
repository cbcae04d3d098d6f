"""GRPO preset (DeepSeekMath)."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.regularizers import KLPenalty
from anypo.samplers import UniformConfig


def grpo() -> AlgoConfig:
    """GRPO: group z-score advantage, PPO clip, KL(pi || pi_ref) in the loss.

    "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    https://arxiv.org/abs/2402.03300, Eq. 3-4 and Sec. 4.2: beta = 0.04 with the k3 estimator,
    per-sequence token mean (``seq_mean_token_mean``), eps = 0.2, one policy update per rollout.
    (The paper also uses G = 64 samples per prompt and lr 1e-6: run settings, not part of this
    config.) verl defaults differ: ``kl_loss_coef=0.001``, ``loss_agg_mode=token-mean``; TRL's
    ``beta`` defaults to 0.0 since v0.19.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(scale="group", eps=1e-6),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="seq_mean_token_mean"),
        regularizers=(KLPenalty(coef=0.04, estimator="k3", aggregation="seq_mean_token_mean"),),
        sampler=UniformConfig(),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="grpo",
    title="DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    arxiv="2402.03300",
    status="verified",
    build=grpo,
    summary="Group-normalised advantages, PPO clip 0.2, k3 KL to the reference (beta 0.04).",
)
