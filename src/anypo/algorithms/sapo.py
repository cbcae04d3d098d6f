"""SAPO preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import SAPO
from anypo.samplers import UniformConfig


def sapo() -> AlgoConfig:
    """SAPO: GRPO advantages with a soft sigmoid gate instead of hard clipping; no KL.

    "Soft Adaptive Policy Optimization", https://arxiv.org/abs/2511.20347: ``tau_pos=1.0``,
    ``tau_neg=1.05`` (``tau_neg >= tau_pos``), seq-mean-token-mean, as verl's ``sapo`` loss and the
    ms-swift defaults.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=SAPO(tau_pos=1.0, tau_neg=1.05, aggregation="seq_mean_token_mean"),
        sampler=UniformConfig(),
    )


PRESET = Preset(
    name="sapo",
    title="Soft Adaptive Policy Optimization",
    arxiv="2511.20347",
    status="verified",
    build=sapo,
    summary="Temperature-controlled sigmoid gate on the token ratio instead of hard clipping.",
)
