"""BNPO preset."""

from __future__ import annotations

from anypo.advantages import BNPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def bnpo() -> AlgoConfig:
    """BNPO: group-centred rewards divided by a Beta density fitted to the batch's success rates.

    "BNPO: Beta Normalization Policy Optimization", https://arxiv.org/abs/2506.02864, Sec. 3 (the
    advantage ``(R - p(q)) / f(p(q); alpha, beta)`` with alpha, beta following the method-of-moments
    fit of the batch's success rates; see ``anypo.advantages.BNPOAdvantage``). Settings of the
    official run (github.com/changyi7231/BNPO ``recipe/bnpo/run.sh``): ``ppo_clip`` with eps 0.2 /
    0.28 and dual clip c = 10, ``seq-mean-token-sum`` aggregation, no KL, one update per rollout
    (mini-batch = rollout batch = 32 prompts), G = 16, lr 1e-6 with 10 warm-up steps.
    """
    return AlgoConfig(
        advantage=BNPOAdvantage(),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=10.0, aggregation="seq_mean_token_sum"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="bnpo",
    title="BNPO: Beta Normalization Policy Optimization",
    arxiv="2506.02864",
    status="verified",
    build=bnpo,
    summary="Advantages normalised by a Beta density of the batch's success rates (adaptive alpha, beta).",
)
