"""DRPO preset."""

from __future__ import annotations

from anypo.advantages import DRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import DRPO
from anypo.samplers import UniformConfig


def drpo() -> AlgoConfig:
    """DRPO: a discriminative objective where only correct answers carry the length reward.

    "Efficient Reasoning via Decoupled Reward Policy Optimization", https://arxiv.org/abs/2510.04474.
    Correct answers of a question are weighted by ``softmax((1 - |o|/L_max) / lambda)`` over the
    correct answers alone (the length term never reaches an incorrect answer, and never turns a
    correct one negative, the failure of length penalties folded into GRPO's reward); incorrect
    answers are pushed down through ``tau log mean exp(s / tau)`` of their length-normalised
    log-likelihoods; a hinge KL to the behaviour policy is the trust region. Settings of the official
    run (github.com/Optimization-AI/DRPO ``scripts/train/run_drpo_1.5b_8k.sh``): lambda 0.1, tau 10,
    beta 1e3, delta 1e-4, 128 prompts x G = 8 with mini-batches of 32 prompts (4 updates per
    rollout: ``minibatch_prompts=32``), lr 2e-6, no reference KL. ``L_max`` is the run's
    ``max_new_tokens``.
    """
    return AlgoConfig(
        advantage=DRPOAdvantage(lam=0.1, tau=10.0),
        policy_loss=DRPO(tau=10.0, beta=1e3, delta=1e-4),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=32,
    )


PRESET = Preset(
    name="drpo",
    title="Efficient Reasoning via Decoupled Reward Policy Optimization",
    arxiv="2510.04474",
    status="verified",
    build=drpo,
    summary="Length reward on correct answers only, normalised among them; discriminative loss, hinge KL.",
)
