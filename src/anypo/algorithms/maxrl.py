"""MaxRL preset."""

from __future__ import annotations

from anypo.advantages import MaxRLAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def maxrl() -> AlgoConfig:
    """MaxRL: group-centred rewards divided by the group mean (``~1/p`` weight on hard prompts).

    "Maximum Likelihood Reinforcement Learning", https://arxiv.org/abs/2602.02710 (see
    ``anypo.advantages.MaxRLAdvantage``). Settings of the official Qwen3 runs
    (github.com/tajwarfahim/maxrl ``qwen3_experiments/run_qwen3_training.sh``): verl's PPO loss with
    clip 0.2 / 0.2 and dual clip 3 (``clip_ratio_c``), token mean, one on-policy update per rollout
    (mini-batch 256 = batch 256 prompts, one epoch), no KL, G = 16, lr 1e-6, gradient clip 0.3
    (a run setting: ``--max-grad-norm 0.3``). SkyRL's example and prime-rl's ``max_rl`` use the
    same advantage.
    """
    return AlgoConfig(
        advantage=MaxRLAdvantage(eps=1e-6),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, dual_clip=3.0, aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="maxrl",
    title="Maximum Likelihood Reinforcement Learning",
    arxiv="2602.02710",
    status="verified",
    build=maxrl,
    summary="Advantage (R - mean) / mean: an unbiased gradient of a truncated log-likelihood of success.",
)
