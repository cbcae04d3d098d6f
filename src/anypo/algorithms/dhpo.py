"""DHPO preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import DHPO
from anypo.samplers import UniformConfig


def dhpo(mixing: str = "average") -> AlgoConfig:
    """DHPO: GRPO advantages, one clipped surrogate on a mixture of token and sequence ratios.

    "Orchestrating Tokens and Sequences: Dynamic Hybrid Policy Optimization for RLVR",
    https://arxiv.org/abs/2601.05607: ``r_mix = w r_t + (1 - w) s_i`` with each branch clipped in its
    own trust region before mixing, ``L = max(-A r_mix, -A (w clip(r_t) + (1 - w) clip(s_i)))``;
    averaged mixing ``w = 1/2`` (default) or entropy-guided ``w_it = H_it / (H_it + mean_t H_it)``
    (``mixing="entropy"``). Reconstructed from the abstract (see :class:`anypo.losses.DHPO`): clip
    ranges 0.2 for both branches, token-mean and no KL are UNVERIFIED choices.

    Mini-batches: like GRPO and GSPO on-policy, every ratio is 1 at the first update of a rollout
    batch, so the mixing and the clipping act only from the second mini-batch on. No mini-batch size
    could be read; the preset takes GSPO's recipe (mini-batches of 64 prompts, 4 per 256-prompt batch;
    an assumption, as the paper compares with GSPO on Qwen3). At most 64 prompts per step that is one
    on-policy update: pass ``--algo.minibatch-prompts`` B/4 (or 1) for the off-policy regime.

    Args:
        mixing: ``average`` (w = 1/2) or ``entropy`` (entropy-guided; the policy forward then returns
            the per-token entropy).
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=DHPO(
            mixing=mixing,
            weight=0.5,
            eps_low_token=0.2,
            eps_high_token=0.2,
            eps_low_seq=0.2,
            eps_high_seq=0.2,
            aggregation="token_mean",
        ),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=64,
    )


PRESET = Preset(
    name="dhpo",
    title="Orchestrating Tokens and Sequences: Dynamic Hybrid Policy Optimization for RLVR",
    arxiv="2601.05607",
    status="reconstructed",
    build=dhpo,
    summary="Mixture of token (GRPO) and sequence (GSPO) ratios, each clipped in its own trust region.",
)
