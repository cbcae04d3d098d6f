"""R2VPO preset (ratio-variance constraint with a dual variable, on stale rollouts)."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import R2VPO
from anypo.rollout.replay import Replay
from anypo.samplers import UniformConfig


def r2vpo(sync_interval: int = 4, sync_offset: int = 0, delta: float = 0.01, dual_lr: float = 1.0) -> AlgoConfig:
    """R2VPO: GRPO advantages, the unclipped ratio surrogate plus ``lambda (Var(r) - delta)``, lambda by dual ascent.

    "Ratio-Variance Regularized Policy Optimization for Efficient LLM Fine-tuning",
    https://arxiv.org/abs/2601.03320 (and the extended https://arxiv.org/abs/2605.26784).
    Reconstructed from the abstracts (no method section or code could be read; see
    :class:`anypo.losses.R2VPO`): token ratio, ``Var = token_mean((r - 1)^2)``, ``delta = 0.01``,
    dual step 1, ``lambda_0 = 1``, token-mean surrogate, no clip: all UNVERIFIED.

    Stale data: the paper's point is that the variance brake lets stale rollouts be reused instead of
    discarded. The preset trains on rollouts of a policy refreshed every ``sync_interval`` steps (the
    same ``Replay`` schedule as the REC family: with 4, a window's batches are 0, 1, 2, 3 steps
    stale), one update per batch; ``sync_interval=1`` is on-policy, where at the single update
    ``r = 1`` and R2VPO is plain policy gradient.

    Args:
        sync_interval: rollout weights refreshed every this many steps (``Replay.sync_interval``).
        sync_offset: rollouts run this many steps ahead (``Replay.sync_offset``).
        delta: the variance budget.
        dual_lr: the dual ascent step.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=R2VPO(delta=delta, dual_lr=dual_lr, lambda_init=1.0, center="one", aggregation="token_mean"),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
        replay=Replay(sync_interval=sync_interval, sync_offset=sync_offset),
    )


PRESET = Preset(
    name="r2vpo",
    title="Ratio-Variance Regularized Policy Optimization for Efficient LLM Fine-tuning",
    arxiv="2601.03320",
    status="reconstructed",
    build=r2vpo,
    summary="Unclipped ratio surrogate + lambda (Var(r) - delta), lambda by dual ascent, on rollouts up to 3 steps stale.",
)
