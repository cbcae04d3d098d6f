"""XRPO preset (the advantage-sharpening half; the rollout allocator and seeding come later)."""

from __future__ import annotations

from anypo.advantages.xrpo import XRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def xrpo() -> AlgoConfig:
    """XRPO's novelty-aware advantage sharpening on GRPO's clipped surrogate, no KL.

    "XRPO: Pushing the limits of GRPO with Targeted Exploration and Exploitation",
    https://arxiv.org/abs/2510.06672: correct responses whose length-normalised log-likelihood is
    below their group's mean get ``A+ = A + min(max(lambda_n (1 - eta), 0), kappa |A|)``,
    ``eta = exp(s_i - mean_g s)`` (reconstructed from a review and a third-party implementation:
    see :class:`anypo.advantages.xrpo.XRPOAdvantage`). ``lambda_n = kappa = 1`` (UNVERIFIED).

    Loss settings: XRPO builds on GRPO; the paper's clip range, aggregation and KL could not be read,
    so the preset takes verl's GRPO defaults (UNVERIFIED): ``ppo_clip`` with eps 0.2, token-mean, no
    KL, one update per rollout batch.

    Not included yet: the rollout allocator (extra rollouts to prompts with the largest expected
    reduction of the CI half-width of their mean reward, plus an exploration bonus) and the in-context
    seeding of all-wrong prompts. They change which prompts get how many samples and belong to the
    data/curricula issue; this preset combines them once both exist.
    """
    return AlgoConfig(
        advantage=XRPOAdvantage(eps=1e-6, novelty_coef=1.0, bonus_cap=1.0, scope="correct"),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        sampler=UniformConfig(),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="xrpo",
    title="XRPO: Pushing the limits of GRPO with Targeted Exploration and Exploitation",
    arxiv="2510.06672",
    status="reconstructed",
    build=xrpo,
    summary="GRPO with novelty-aware advantage sharpening of unlikely correct answers (allocator and seeding pending).",
)
