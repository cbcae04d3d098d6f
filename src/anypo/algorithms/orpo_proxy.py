"""ORPO (chi-squared occupancy-measure regularisation) preset for the hackable-proxy task."""

from __future__ import annotations

from anypo.advantages.chi2 import Chi2Occupancy
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.rollout.base_samples import BaseRolloutsConfig
from anypo.samplers import UniformConfig


def orpo_proxy(coef: float = 0.05) -> AlgoConfig:
    """ORPO: GRPO on the proxy reward minus a chi-squared occupancy-measure penalty against the base
    policy, estimated by a discriminator between the policy's and the base policy's (prefix, token)
    pairs. Run it on the ``addition_proxy`` task (``--task.name addition_proxy``), where hedging over
    several numbers raises the proxy but not the true reward (``reward/accuracy``, held-out pass@k).

    "Correlated Proxies: A New Definition and Improved Mitigation for Reward Hacking",
    https://arxiv.org/abs/2403.03185 (objective ``J(pi, R~) - lambda sqrt(chi2(mu_pi || mu_base))``).
    Penalty and discriminator loss of the official code (github.com/cassidylaidlaw/orpo,
    ``occupancy_measures/agents/orpo.py``, divergence ``sqrt_chi2``, coefficient times the base
    policy's reward std); the LLM form is reconstructed (see ``anypo.advantages.chi2.Chi2Occupancy``
    and ``anypo.rollout.base_samples.BaseRolloutsConfig``): per-token penalties summed into the
    outcome reward before GRPO's group z-score, PPO clip 0.2 with a sequence mean of token means as
    GRPO's, one update per step, no KL term (the occupancy penalty replaces it).

    Args:
        coef: the penalty's coefficient (the code's sweep: 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01).
    """
    return AlgoConfig(
        advantage=Chi2Occupancy(coef=coef),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="seq_mean_token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        rollout=BaseRolloutsConfig(),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="orpo_proxy",
    title="Correlated Proxies: A New Definition and Improved Mitigation for Reward Hacking",
    arxiv="2403.03185",
    status="reconstructed",
    build=orpo_proxy,
    summary="GRPO on a proxy reward minus a sqrt chi-squared occupancy-measure penalty from a discriminator against base-policy samples.",
)
