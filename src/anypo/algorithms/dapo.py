"""DAPO preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import DynamicSamplingConfig


def dapo(max_tokens: int | None = None, cache_tokens: int | None = None) -> AlgoConfig:
    """DAPO: clip-higher, dynamic sampling, token-level loss, overlong reward shaping, no KL.

    "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
    https://arxiv.org/abs/2503.14476, Sec. 3.1-3.4: ``eps_low=0.2, eps_high=0.28``; keep groups with
    ``0 < #correct < G``; ``token_mean`` over all tokens of the batch; soft overlong punishment with
    ``L_max=20480, L_cache=4096``; KL removed. The paper takes 16 gradient steps per rollout batch of
    512 prompts x G = 16, that is mini-batches of 32 whole prompts (``minibatch_prompts=32``), lr
    1e-6. At a rollout batch of at most 32 prompts that is a single on-policy update, where the ratio
    is 1 and clip-higher never binds: to keep the paper's off-policy regime at a small batch, pass a
    smaller size (``--algo.minibatch-prompts 1`` gives B updates of one group each). verl's DAPO
    recipe bounds the over-sampling with ``max_num_gen_batches=10`` (our ``max_draws``).

    Deviation: by default the shaping scales with the run's generation limit (``L_max =
    max_new_tokens``, ``L_cache = L_max // 5``, the paper's 4096/20480 ratio): the paper's absolute
    values would never fire with the short budgets of CPU runs. Pass them for the paper's setting.

    Args:
        max_tokens: L_max of the overlong shaping; None = the run's ``max_new_tokens``.
        cache_tokens: L_cache, the soft-punishment interval before L_max; None = L_max // 5.

    Raises:
        ImportError: while the ``overlong`` reward part (``anypo.rewards.shaping``) is not installed.
    """
    from anypo.rewards.shaping import Overlong  # the reward part lives with the rewards

    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.28, aggregation="token_mean"),
        regularizers=(),
        sampler=DynamicSamplingConfig(max_draws=10, metric="correct"),
        reward_shaping=(Overlong(max_tokens=max_tokens, cache_tokens=cache_tokens),),
        ppo_epochs=1,
        minibatch_prompts=32,
    )


PRESET = Preset(
    name="dapo",
    title="DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
    arxiv="2503.14476",
    status="verified",
    build=dapo,
    summary="Clip-higher (0.2/0.28), dynamic sampling, token-mean loss, overlong shaping, no KL.",
)
