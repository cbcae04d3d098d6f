"""CISPO preset (MiniMax-M1)."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import CISPO
from anypo.samplers import UniformConfig


def cispo() -> AlgoConfig:
    """CISPO: GRPO advantages, REINFORCE with a clipped stop-gradient IS weight, token mean, no KL.

    "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    https://arxiv.org/abs/2506.13585, Sec. 3.1: no lower bound on the IS weight (``eps_low=1``), only
    ``eps_high`` tuned; its value is UNVERIFIED here and follows Trinity-RFT's 0.28. Token-level
    (``token_mean``) normalisation and no KL term as in the paper.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=CISPO(eps_low=1.0, eps_high=0.28, aggregation="token_mean"),
        sampler=UniformConfig(),
    )


PRESET = Preset(
    name="cispo",
    title="MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    arxiv="2506.13585",
    status="verified",
    build=cispo,
    summary="Clip the importance-sampling weight (stop-gradient), never drop a token's gradient.",
)
