"""MDPO preset (on-policy multistep-SGD MDPO on token policies)."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import MDPOLM
from anypo.samplers import UniformConfig


def mdpo_lm(total_iterations: int = 30, sgd_steps: int = 5) -> AlgoConfig:
    """MDPO: ``sgd_steps`` updates per rollout batch on ``-A r + KL(pi_theta || pi_k) / t_k`` with the
    exact KL over the vocabulary to the step-start policy ``pi_k``, ``t_k = 1 - (k - 1) / K``.

    "Mirror Descent Policy Optimization", https://arxiv.org/abs/2005.09814 (see ``anypo.losses.MDPOLM``).
    Settings of the official on-policy code (github.com/manantomar/Mirror-Descent-Policy-Optimization
    ``mdpo_on/mdpo.py``, method ``multistep-SGD``): 5 full-batch Adam steps per iteration
    (``sgd_steps``), KL direction new || old, step size ``t_k = 1 - (iters_so_far - 1) / n_updates``,
    no clipping. LM mapping (anypo's, UNVERIFIED as MDPO-faithful): a state is a response prefix, the
    advantage GRPO's group z-score of outcome rewards (the paper standardises GAE), token mean; the
    loop keeps a frozen copy of the step-start weights for ``pi_k``'s full next-token distributions
    (``needs_old_full_logprobs``; one more model in memory), whose body runs once per response and
    update (its hidden states are kept for the other passes, which run only its head).

    Args:
        total_iterations: K of the t_k schedule: the run's training steps (the default ``--steps`` 30).
        sgd_steps: full-batch updates per rollout batch (official 5).
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=MDPOLM(
            kl="exact", total_iterations=total_iterations, updates_per_iteration=sgd_steps, aggregation="token_mean"
        ),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=sgd_steps,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="mdpo_lm",
    title="Mirror Descent Policy Optimization",
    arxiv="2005.09814",
    status="verified",
    build=mdpo_lm,
    summary="5 full-batch updates per rollout on -A r + exact KL(pi || pi_k) / t_k, t_k shrinking over the run; no clipping.",
)
