"""OPO preset."""

from __future__ import annotations

from anypo.advantages import OPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def opo() -> AlgoConfig:
    """OPO: exact on-policy training with the length-weighted (optimal) group baseline.

    "On-Policy RL with Optimal Reward Baseline", https://arxiv.org/abs/2505.23585 (see
    ``anypo.advantages.OPOAdvantage``). Exact on-policy: one optimizer step per rollout batch
    (mini-batch = rollout batch, one epoch), so the ratio is 1 and the clipped surrogate is the plain
    policy gradient; no KL and no entropy bonus (github.com/microsoft/LMOps ``opo/README.md``; verl
    ``docs/algo/opo.md``: ``ppo_mini_batch_size = train_batch_size = 1024``). The official code is
    verl v0.2.0 with its default loss: ``ppo_clip`` with eps 0.2 and token-mean aggregation.
    """
    return AlgoConfig(
        advantage=OPOAdvantage(),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="opo",
    title="On-Policy RL with Optimal Reward Baseline",
    arxiv="2505.23585",
    status="verified",
    build=opo,
    summary="Exact on-policy updates with a length-weighted group baseline (no std, no KL).",
)
