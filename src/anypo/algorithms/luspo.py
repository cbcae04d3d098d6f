"""LUSPO preset (reconstructed)."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import LUSPO
from anypo.samplers import UniformConfig


def luspo() -> AlgoConfig:
    """LUSPO (RECONSTRUCTED): GSPO with each sequence's loss multiplied by its length.

    "Length-Unbiased Sequence Policy Optimization: Revealing and Controlling Response Length
    Variation in RLVR", https://arxiv.org/abs/2602.05261. Only summaries could be read: the
    normaliser (here ``1/N``, ``seq_mean_token_sum``) and the clip ranges and mini-batches (here
    GSPO's 3e-4 / 4e-4 with mini-batches of 64 prompts, 4 per 256-prompt batch) are UNVERIFIED.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=LUSPO(eps_low=3e-4, eps_high=4e-4, aggregation="seq_mean_token_sum"),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=64,
    )


PRESET = Preset(
    name="luspo",
    title="Length-Unbiased Sequence Policy Optimization: Revealing and Controlling Response Length Variation in RLVR",
    arxiv="2602.05261",
    status="reconstructed",
    build=luspo,
    summary="GSPO with length-weighted sequence terms against length collapse (normaliser reconstructed).",
)
