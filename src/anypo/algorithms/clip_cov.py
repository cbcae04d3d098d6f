"""Clip-Cov preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import ClipCov
from anypo.samplers import DynamicSamplingConfig


def clip_cov() -> AlgoConfig:
    """Clip-Cov: GRPO whose PPO surrogate drops the gradient of a few random high-covariance tokens.

    "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
    https://arxiv.org/abs/2505.22617 (see ``anypo.losses.ClipCov``). Settings of the official recipe
    (github.com/PRIME-RL/Entropy-Mechanism-of-RL ``recipe/dapo/7b_clip_cov.sh``, also the 32B one):
    ``clip_cov_ratio`` 2e-4, band (1, 5), PPO clip ratio 1 on both sides, GRPO advantages, token mean,
    dynamic sampling on accuracy (at most 10 generation batches), 256 prompts x 8 samples per step in
    mini-batches of 32 prompts (8 updates per step), lr 1e-6, no KL, no entropy bonus, temperature 1.

    At a rollout batch of at most 32 prompts the mini-batch is the whole batch: one on-policy update,
    where the ratio is 1 and only the covariance selection acts (pass ``--algo.minibatch-prompts`` for
    several updates). ``frac`` 2e-4 detaches one token per mini-batch below 10,000 response tokens.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=ClipCov(eps_low=1.0, eps_high=1.0, frac=2e-4, cov_low=1.0, cov_high=5.0, aggregation="token_mean"),
        regularizers=(),
        sampler=DynamicSamplingConfig(max_draws=10, metric="correct"),
        ppo_epochs=1,
        minibatch_prompts=32,
    )


PRESET = Preset(
    name="clip_cov",
    title="The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
    arxiv="2505.22617",
    status="verified",
    build=clip_cov,
    summary="GRPO with the gradient of a few random high-covariance tokens detached (2e-4 of the tokens, cov in (1, 5)).",
)
