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

    Mini-batches: the clipped weight is 1 at ratio 1, so on-policy CISPO is plain token-mean policy
    gradient; it acts from the second mini-batch of a rollout on. We found no mini-batch size in the
    paper; the preset takes DAPO's (32 prompts, 16 updates per 512-prompt batch), an assumption. At
    a rollout batch of at most 32 prompts that is one on-policy update: pass
    ``--algo.minibatch-prompts 1`` for the off-policy regime.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=CISPO(eps_low=1.0, eps_high=0.28, aggregation="token_mean"),
        sampler=UniformConfig(),
        minibatch_prompts=32,
    )


PRESET = Preset(
    name="cispo",
    title="MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    arxiv="2506.13585",
    status="verified",
    build=cispo,
    summary="Clip the importance-sampling weight (stop-gradient), never drop a token's gradient.",
)
