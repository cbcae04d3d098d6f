"""RiskPO preset."""

from __future__ import annotations

from anypo.advantages import RiskPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def riskpo() -> AlgoConfig:
    """RiskPO: a mixed value-at-risk advantage over bundles of questions.

    "Risk-based Policy Optimization via Verifiable Reward for LLM Post-Training",
    https://arxiv.org/abs/2510.00911. Prompts are bundled (5 per bundle); the j-th responses of a
    bundle's questions form one "paper" whose score is their summed reward; the advantage of a paper
    mixes a range value-at-risk between the 0.2 and 0.9 quantiles of the bundle's paper scores with a
    lower-tail CVaR term (weight 1.5), so the hard, low-reward tail is emphasised rather than the
    mean. Settings of the official run (github.com/RTkenny/RiskPO
    ``scripts/run_qwen2.5_1.5b_MVaR_math.sh``): ``ppo_clip`` eps 0.2, token-mean loss, n = 5
    samples per prompt, no KL. The paper's quantile tracker is not used (see
    ``anypo.advantages.RiskPOAdvantage`` for why).
    """
    return AlgoConfig(
        advantage=RiskPOAdvantage(alpha_dn=0.2, alpha_up=0.9, bundle_size=5, w_mix=1.5, credit="std"),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="riskpo",
    title="Risk-based Policy Optimization via Verifiable Reward for LLM Post-Training",
    arxiv="2510.00911",
    status="verified",
    build=riskpo,
    summary="Mixed value-at-risk advantage over bundles of 5 questions; emphasises the hard tail.",
)
