"""XRPO preset: the rollout allocator and in-context seeding (exploration) with novelty-aware
advantage sharpening (exploitation)."""

from __future__ import annotations

from anypo.advantages.xrpo import XRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.rollout import XRPOAllocConfig
from anypo.samplers import UniformConfig


def xrpo() -> AlgoConfig:
    """XRPO: uncertainty-driven rollout allocation and in-context seeding, then GRPO's clipped
    surrogate on novelty-sharpened advantages, no KL.

    "XRPO: Pushing the limits of GRPO with Targeted Exploration and Exploitation",
    https://arxiv.org/abs/2510.06672 (reconstructed from a review and a third-party implementation):

    * exploration (:class:`anypo.rollout.XRPOAllocConfig`): every drawn prompt gets 4 rollouts, the
      rest of the step's B x G budget goes in 2 rounds to the prompts whose CI half-width of the mean
      reward shrinks most from one more rollout, plus ``0.1 log(1 + T) / n``; groups still all wrong
      are regenerated with 2 solved examples of other prompts in the prompt (alpha 0.05, lambda 0.1,
      base 4, 2 rounds, greedy assignment, exemplar corpus: UNVERIFIED);
    * exploitation (:class:`anypo.advantages.xrpo.XRPOAdvantage`): correct responses whose
      length-normalised log-likelihood is below their group's mean get
      ``A+ = A + min(max(lambda_n (1 - eta), 0), kappa |A|)``, ``eta = exp(s_i - mean_g s)``,
      ``lambda_n = kappa = 1`` (UNVERIFIED).

    Loss settings: the paper's clip range, aggregation and KL could not be read; verl's GRPO
    defaults (UNVERIFIED): ``ppo_clip`` eps 0.2, token-mean, no KL, one update per rollout batch.
    """
    return AlgoConfig(
        advantage=XRPOAdvantage(eps=1e-6, novelty_coef=1.0, bonus_cap=1.0, scope="correct"),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        sampler=UniformConfig(),
        rollout=XRPOAllocConfig(base_samples=4, rounds=2, alpha=0.05, explore=0.1, seeding=True, exemplars=2),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="xrpo",
    title="XRPO: Pushing the limits of GRPO with Targeted Exploration and Exploitation",
    arxiv="2510.06672",
    status="reconstructed",
    build=xrpo,
    summary="GRPO with uncertainty-driven rollout allocation, in-context seeding and novelty-sharpened advantages.",
)
