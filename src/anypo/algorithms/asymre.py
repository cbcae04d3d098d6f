"""AsymRE preset (REINFORCE with a lowered baseline, on stale rollouts)."""

from __future__ import annotations

from anypo.algorithms.rec import trinity_algo
from anypo.config import AlgoConfig, Preset
from anypo.losses import AsymRE


def asymre(tau: float = 0.1, sync_interval: int = 20, sync_offset: int = 0) -> AlgoConfig:
    """Asymmetric REINFORCE read as REINFORCE with a forward-KL regulariser, on stale rollouts.

    "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm: Demystifying Some Myths About GRPO
    and Its Friends", https://arxiv.org/abs/2509.24203 (AsymRE after "Asymmetric REINFORCE for
    off-Policy Reinforcement Learning", https://arxiv.org/abs/2506.20520): ``A_i = R_i - mean_g R``,
    loss ``token_mean(-(A + tau) * lp)`` with ``tau = 0.1``, i.e. the baseline lowered by 0.1
    (Trinity-RFT ``rec`` with ``regularizer: forward-kl``, ``regularizer_coef: 0.1``;
    examples/rec_gsm8k). The rollout weights are refreshed every 20 steps, as in the official REC
    example (``sync_interval: 20``). One update per rollout batch; no importance ratio.

    Args:
        tau: how far the baseline is lowered.
        sync_interval: Trinity's ``sync_interval`` (1: on-policy).
        sync_offset: Trinity's ``sync_offset``.
    """
    return trinity_algo(AsymRE(tau=tau, aggregation="token_mean"), sync_interval, sync_offset)


PRESET = Preset(
    name="asymre",
    title="Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm: Demystifying Some Myths About GRPO and Its Friends",
    arxiv="2509.24203",
    status="verified",
    build=asymre,
    summary="AsymRE: REINFORCE with the baseline lowered by tau = 0.1, rollouts refreshed every 20 steps.",
)
