"""GMPO preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import GMPO
from anypo.samplers import UniformConfig


def gmpo() -> AlgoConfig:
    """GMPO: the geometric mean of the token ratios of a sequence, clipped per token in log space.

    "Geometric-Mean Policy Optimization", https://arxiv.org/abs/2507.20673 (see ``anypo.losses.GMPO``).
    Settings of the official run (github.com/callsys/GMPO ``scripts/qwen2.5-math-7b-gmpo.sh``):
    GRPO advantages (group std), log-space clip range 0.4 on both sides, no KL (``beta 0``), one
    epoch, 128 prompts x 8 samples per rollout, lr 1e-6. The official trainer (oat) takes one
    optimizer step per 128 sequences, i.e. mini-batches of 16 prompts, 8 updates per rollout
    (``minibatch_prompts=16``); verl's example (``examples/gmpo_trainer``) uses 4 mini-batches of
    256 of 1024 prompts.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(scale="group", eps=1e-6),
        policy_loss=GMPO(eps_low=0.4, eps_high=0.4, aggregation="seq_mean_token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=16,
    )


PRESET = Preset(
    name="gmpo",
    title="Geometric-Mean Policy Optimization",
    arxiv="2507.20673",
    status="verified",
    build=gmpo,
    summary="Maximises the geometric mean of token ratios (log-space clip 0.4): fewer extreme ratios than GRPO.",
)
