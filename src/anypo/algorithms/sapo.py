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

    Mini-batches: the gate is 1 at ratio 1, so on-policy SAPO is plain policy gradient; it acts from
    the second mini-batch of a rollout on. We found no mini-batch size in the paper; the preset uses
    the GSPO recipe of the same team (mini-batches of 64 prompts, 4 per 256-prompt batch; an
    assumption). At a rollout batch of at most 64 prompts that is one on-policy update: pass
    ``--algo.minibatch-prompts`` B/4 (or 1) for the off-policy regime the gate is made for.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=SAPO(tau_pos=1.0, tau_neg=1.05, aggregation="seq_mean_token_mean"),
        sampler=UniformConfig(),
        minibatch_prompts=64,
    )


PRESET = Preset(
    name="sapo",
    title="Soft Adaptive Policy Optimization",
    arxiv="2511.20347",
    status="verified",
    build=sapo,
    summary="Temperature-controlled sigmoid gate on the token ratio instead of hard clipping.",
)
