"""AEPO preset."""

from __future__ import annotations

from anypo.advantages.aepo import AEPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.rollout.aepo import AEPOControllerConfig
from anypo.samplers import UniformConfig


def aepo(entropy_base: float = 0.5, reinforce_sample_num: int = 60) -> AlgoConfig:
    """AEPO: GRPO plus REINFORCE on positive-advantage samples drawn at temperature 1.2 (entropy at or
    below the target) or 0.8 (above), spliced into the batch for a quarter of the prompts.

    "Arbitrary Entropy Policy Optimization: Entropy Is Controllable in Reinforcement Fine-tuning",
    https://arxiv.org/abs/2510.08141 (README: ``grad J_AEPO = grad J_GRPO + alpha E_{o ~ pi^T}[grad log
    pi(o|q) R(q, o)]``). Settings of the official code (github.com/597358816/AEPO
    ``examples/qwen-math-7b-AEPO.sh``, ``examples/config.yaml``, ``verl/trainer/config.py``):
    ``entropy_base`` 0.5, ``reinforce_sample_num`` 60, temperatures 1.2 / 0.8, a quarter of the prompts,
    threshold 0.05; PPO clip 0.2 / 0.2 with dual clip 3, token mean, no KL (``disable_kl=true``); 512
    prompts x 5 per step in updates of 128 prompts, lr 1e-6, rollout temperature 1.0. The rollout part
    ``aepo_controller`` builds the batch and keeps the entropy statistic (part state, in checkpoints);
    the advantage ``aepo`` gives its rows advantage 1 (see ``anypo.rollout.aepo.AEPOControllerConfig``).

    Args:
        entropy_base: H, the target of the entropy statistic (the README's table: 0.75 best).
        reinforce_sample_num: most controller samples per step.
    """
    return AlgoConfig(
        advantage=AEPOAdvantage(),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, dual_clip=3.0, aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        rollout=AEPOControllerConfig(entropy_base=entropy_base, reinforce_sample_num=reinforce_sample_num),
        ppo_epochs=1,
        minibatch_prompts=128,
    )


PRESET = Preset(
    name="aepo",
    title="Arbitrary Entropy Policy Optimization: Entropy Is Controllable in Reinforcement Fine-tuning",
    arxiv="2510.08141",
    status="verified",
    build=aepo,
    summary="GRPO plus REINFORCE (advantage 1) on positive samples drawn at T = 1.2 / 0.8 for a quarter of the prompts (entropy steering).",
)
