"""OPMD preset (REINFORCE with a squared log-ratio penalty, on stale rollouts)."""

from __future__ import annotations

from anypo.algorithms.rec import trinity_algo
from anypo.config import AlgoConfig, Preset
from anypo.losses import OPMD


def opmd(tau: float = 0.1, sync_interval: int = 20, sync_offset: int = 0) -> AlgoConfig:
    """Kimi's OPMD read as regularised REINFORCE (the REP family), on stale rollouts.

    "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm: Demystifying Some Myths About GRPO
    and Its Friends", https://arxiv.org/abs/2509.24203 (OPMD after "Kimi k1.5",
    https://arxiv.org/abs/2501.12599): ``A_i = R_i - mean_g R``, loss
    ``token_mean(-A * lp + tau * (lp - old)^2)`` with ``tau = 0.1`` (Trinity-RFT ``rec`` with
    ``regularizer: k2``, ``regularizer_coef: 0.1``, no clipping, no weight; examples/rec_gsm8k). The
    rollout weights are refreshed every 20 steps, as in the official REC example
    (``sync_interval: 20``); ``old`` is the log-prob of the policy that generated the batch. One
    update per rollout batch.

    Args:
        tau: coefficient of the squared log-ratio penalty.
        sync_interval: Trinity's ``sync_interval`` (1: on-policy).
        sync_offset: Trinity's ``sync_offset``.
    """
    return trinity_algo(OPMD(tau=tau, aggregation="token_mean"), sync_interval, sync_offset)


PRESET = Preset(
    name="opmd",
    title="Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm: Demystifying Some Myths About GRPO and Its Friends",
    arxiv="2509.24203",
    status="verified",
    build=opmd,
    summary="OPMD: REINFORCE plus tau (lp - old)^2 to the behaviour policy (tau 0.1), rollouts refreshed every 20 steps.",
)
