"""ReMax preset."""

from __future__ import annotations

from anypo.advantages import ReMaxAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import Reinforce
from anypo.samplers import UniformConfig


def remax(gamma: float = 1.0) -> AlgoConfig:
    """ReMax: REINFORCE whose baseline is the reward of the greedy response to the same prompt.

    "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large
    Language Models", https://arxiv.org/abs/2310.10505, Sec. 4 and Algorithm 1:
    ``A_i = r(x, a_i) - r(x, a_greedy)`` on every token of the sampled response, loss
    ``-(1 / sum_i |o_i|) sum_it A_i lp_it`` (the official ``actor_loss_fn``: token mean), one on-policy
    update per batch (``ppo_epochs 1``). The loop decodes one greedy response per prompt with the
    current weights; it is scored, never trained on. The paper samples one response per prompt
    (``--samples-per-prompt 1``); with G > 1 each sample is compared with the same greedy reward.
    Official run (github.com/liziniu/ReMax, ``run_opt_1.3b.sh``): lr 1e-6, top-p 0.9, temperature 1,
    ``gamma 0.99`` and a per-token KL penalty ``kl_ctl 0.05`` in the returns (RLHF with a reward
    model); for verifiable rewards the preset takes the paper's undiscounted estimator and no KL.

    Args:
        gamma: discount towards earlier tokens (the official code's 0.99; paper: 1).
    """
    return AlgoConfig(
        advantage=ReMaxAdvantage(gamma=gamma),
        policy_loss=Reinforce(aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="remax",
    title="ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large Language Models",
    arxiv="2310.10505",
    status="verified",
    build=remax,
    summary="REINFORCE with the greedy response's reward as the baseline (one greedy decode per prompt).",
)
