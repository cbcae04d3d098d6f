"""GSPO preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import GSPO
from anypo.samplers import UniformConfig


def gspo() -> AlgoConfig:
    """GSPO: GRPO advantages with a clipped, length-normalised sequence ratio; no KL.

    "Group Sequence Policy Optimization", https://arxiv.org/abs/2507.18071, Eq. 5 and Sec. 5.1 (v2):
    clip ranges 3e-4 / 4e-4, each rollout batch split into 4 mini-batches, no KL (as TRL's paper
    index quotes). verl's GSPO recipe for Qwen3 uses the same ranges with ``seq-mean-token-mean`` and
    makes the 4 mini-batches 64 of 256 prompts: ``minibatch_prompts=64``. At a rollout batch of at
    most 64 prompts that is one on-policy update, where every sequence ratio is 1 and the clip never
    binds; pass ``--algo.minibatch-prompts`` B/4 (or 1) for the paper's off-policy regime.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=GSPO(eps_low=3e-4, eps_high=4e-4, level="sequence", aggregation="seq_mean_token_mean"),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=64,
    )


PRESET = Preset(
    name="gspo",
    title="Group Sequence Policy Optimization",
    arxiv="2507.18071",
    status="verified",
    build=gspo,
    summary="Sequence-level importance ratio and clipping (3e-4/4e-4), no KL.",
)
