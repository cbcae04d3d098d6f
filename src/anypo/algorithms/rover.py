"""ROVER preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import ROVER
from anypo.samplers import UniformConfig


def rover(old_means: str = "on_policy") -> AlgoConfig:
    """ROVER: the uniform random policy's Q-function, parametrised by the policy; no critic, no reference.

    "Random Policy Valuation is Enough for LLM Reasoning with Verifiable Rewards",
    https://arxiv.org/abs/2509.24981; verified against the official code (github.com/yuxiaooye/ROVER,
    ``Math/``): ``Q = rho (lp - lp_old)`` regressed by token-mean squared error onto
    ``sg[A + rho (M_theta - M_old)(s_t+1)]``, ``M`` the mean log-probability over the vocabulary, ``A``
    the GRPO advantage; rho 1.0, next-Q scale 1.0, no KL, no reference model (official Qwen3-8B
    script; its G = 8, rollout temperature 0.6 and lr 1e-6 are run settings).

    Mini-batches: the official run takes 4 updates per rollout batch (mini-batches of 32 of 128
    prompts), where ``M_old`` comes from the old-log-prob pass. By default the
    preset runs the code's on-policy branch (``old_means="on_policy"``, one update per rollout batch,
    bootstrap term 0); at the CPU-sized 2-8 prompts per step a 32-prompt mini-batch is the whole batch
    anyway. ``old_means="batch"`` with ``minibatch_prompts=32`` is the official regime: the loop
    fills ``extras["old_mean_logprobs"]`` in its old-log-prob pass (``needs_old_mean_logprobs``).

    Args:
        old_means: ``on_policy`` (default) or ``batch`` (the official off-policy regime, with the
            behaviour policy's mean log-softmax from the loop's old-log-prob pass).
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(scale="group", eps=1e-6),
        policy_loss=ROVER(rho=1.0, next_q_scale=1.0, level="token", clip=None, old_means=old_means),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None if old_means == "on_policy" else 32,
    )


PRESET = Preset(
    name="rover",
    title="Random Policy Valuation is Enough for LLM Reasoning with Verifiable Rewards",
    arxiv="2509.24981",
    status="verified",
    build=rover,
    summary="Q of the uniform random policy from the policy's own log-probs (mean over the vocabulary); no critic, no reference.",
)
