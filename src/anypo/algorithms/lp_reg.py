"""Lp-Reg preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.regularizers import LpReg
from anypo.samplers import UniformConfig


def lp_reg() -> AlgoConfig:
    """Lp-Reg: GRPO plus a k3 pull of the lowest-probability negative tokens toward a min-p proxy of
    the old policy.

    "Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable Reward",
    https://arxiv.org/abs/2510.03222 (see ``anypo.regularizers.LpReg``). Settings of the authors'
    on-policy recipe (github.com/CarlanLark/Lp-Reg-dev ``recipe/lp_reg/Qwen3_14b_lp_reg_onpolicy_64gpu.sh``):
    min-p threshold 0.02, 1% of the negative tokens (no positive ones), ``ppo_kl_coef`` 1 with k3,
    ``clip_ratio_low`` 1.0 / ``clip_ratio_high`` 9.0 (with which ``ppo_clip`` + ``lp_reg`` is the
    code's loss exactly), token mean, GRPO advantages, no KL to a reference, one update per step
    (256 prompts x 8), lr 1e-6, temperature 1.0.

    After the advantages the loop selects the positions and computes the proxy from the behaviour
    policy's logits at those positions only (``needs_old_proxy_logprobs``): one extra no-grad forward.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=PPOClip(eps_low=1.0, eps_high=9.0, aggregation="token_mean"),
        regularizers=(LpReg(beta=1.0, kappa=0.02, filter="minp", neg_frac=0.01, pos_frac=0.0),),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="lp_reg",
    title="Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable Reward",
    arxiv="2510.03222",
    status="verified",
    build=lp_reg,
    summary="GRPO (clip 1 / 9) plus k3 toward a min-p proxy of the old policy on the 1% lowest-probability negative tokens.",
)
