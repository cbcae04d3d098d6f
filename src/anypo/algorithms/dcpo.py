"""DCPO preset."""

from __future__ import annotations

from anypo.advantages import DCPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def dcpo(entropy_base: float = 0.5) -> AlgoConfig:
    """DCPO: the GRPO advantage mixed with a REINFORCE term weighted toward the behaviour policy at
    a target temperature (1.2 to raise the entropy, 0.8 to lower it).

    "Distribution-Centric Policy Optimization Dominates the Exploration-Exploitation Trade-off",
    https://arxiv.org/abs/2601.12730 (see ``anypo.advantages.DCPOAdvantage``). Settings of the
    official code (github.com/597358816/DCPO ``examples/qwen-math-7b-DCPO.sh``, ``examples/config.yaml``,
    the ``DCPO`` branch of ``ray_trainer.py::fit``): ``entropy_base`` 0.5, temperatures 1.2 / 0.8, cap
    0.1, success threshold 0.05; PPO clip 0.2 / 0.2 with dual clip 3, token mean, no KL; 512 prompts x
    5 per step in updates of 128 prompts, lr 1e-6, rollout temperature 1.0.

    The loop computes the behaviour policy's log-probs at ``(T, 1.0)`` in its old-log-prob pass
    (``needs_old_tempered_logprobs``); the entropy statistic ``H_prev`` is part state (in checkpoints).

    Args:
        entropy_base: H0 (the README's ablation reports 0.25 best on Qwen2.5-Math-7B).
    """
    return AlgoConfig(
        advantage=DCPOAdvantage(entropy_base=entropy_base),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, dual_clip=3.0, aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=128,
    )


PRESET = Preset(
    name="dcpo",
    title="Distribution-Centric Policy Optimization Dominates the Exploration-Exploitation Trade-off",
    arxiv="2601.12730",
    status="verified",
    build=dcpo,
    summary="GRPO mixed with a REINFORCE term importance-weighted toward the old policy at T = 1.2 / 0.8 (entropy steering).",
)
