"""REC preset (group-relative REINFORCE with clipping as regularisation, on stale rollouts)."""

from __future__ import annotations

from anypo.advantages import DrGRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import REC
from anypo.rollout.replay import Replay
from anypo.samplers import UniformConfig


def trinity_algo(policy_loss, sync_interval: int, sync_offset: int) -> AlgoConfig:
    """The setting the REC family shares (Trinity-RFT's examples): ``A = R - mean_g R``, one update per
    rollout batch, rollouts refreshed every ``sync_interval`` steps; only the loss differs."""
    return AlgoConfig(
        advantage=DrGRPOAdvantage(),
        policy_loss=policy_loss,
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
        replay=Replay(sync_interval=sync_interval, sync_offset=sync_offset),
    )


def rec(sync_interval: int = 20, sync_offset: int = 0) -> AlgoConfig:
    """REC-OneSide-NoIS on rollouts of a policy refreshed every ``sync_interval`` steps.

    "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm: Demystifying Some Myths About GRPO
    and Its Friends", https://arxiv.org/abs/2509.24203 (the REC family; formulas from the official
    code, Trinity-RFT ``trinity/algorithm/policy_loss_fn/rec_policy_loss.py`` and
    ``examples/rec_gsm8k/README.md``): ``A_i = R_i - mean_g R`` (``std_normalize: false``), loss
    ``token_mean(-A * 1[in_range] * lp)`` with the one-sided trust region of ratio 1 +- 0.2 and no
    importance weight. The official example (``examples/rec_gsm8k/gsm8k.yaml``) refreshes the
    rollout weights every 20 training steps (``synchronizer.sync_interval: 20``, ``sync_offset: 0``),
    so its batches are 0-19 steps stale: the off-policy regime the paper's claim is about. One
    update per rollout batch. G = 8 (``repeat_times``) and lr are run settings.

    Args:
        sync_interval: Trinity's ``sync_interval`` (1: on-policy).
        sync_offset: Trinity's ``sync_offset``.
    """
    loss = REC(clip_mode="one_side", weight="none", eps_low=0.2, eps_high=0.2, aggregation="token_mean")
    return trinity_algo(loss, sync_interval, sync_offset)


PRESET = Preset(
    name="rec",
    title="Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm: Demystifying Some Myths About GRPO and Its Friends",
    arxiv="2509.24203",
    status="verified",
    build=rec,
    summary="REC-OneSide-NoIS: REINFORCE with a one-sided ratio mask, on rollouts refreshed every 20 steps.",
)
