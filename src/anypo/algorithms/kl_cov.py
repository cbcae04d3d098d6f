"""KL-Cov preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import KLCov
from anypo.samplers import UniformConfig


def kl_cov() -> AlgoConfig:
    """KL-Cov: the unclipped ratio surrogate with a ``|lp - old|`` penalty on the top-covariance tokens.

    "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
    https://arxiv.org/abs/2505.22617 (see ``anypo.losses.KLCov``). Settings of the official 7B recipe
    (github.com/PRIME-RL/Entropy-Mechanism-of-RL ``recipe/dapo/7b_kl_cov.sh``): ``k_percent`` 0.2
    (the code divides it by 100: ``frac = 2e-3``; the 32B recipe uses 0.02, ``frac = 2e-4``),
    ``ppo_kl_coef`` 1, GRPO advantages, token mean, one update per step (the mini-batch is the whole
    rollout batch of 256 prompts x 8), no dynamic sampling, lr 1e-6, no KL to a reference, no
    entropy bonus, temperature 1.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=KLCov(frac=2e-3, beta=1.0, aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="kl_cov",
    title="The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
    arxiv="2505.22617",
    status="verified",
    build=kl_cov,
    summary="Unclipped ratio loss plus |lp - old| on the top 2e-3 of tokens by covariance of log-prob and advantage.",
)
