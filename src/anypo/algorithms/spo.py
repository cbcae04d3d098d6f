"""SPO preset: the self-play win rate of each sample in its group as the reward of GRPO's update."""

from __future__ import annotations

from anypo.advantages.spo import SPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.regularizers import KLPenalty
from anypo.samplers import UniformConfig


def spo(preference: str = "reward_bt", temperature: float = 0.0, convention: str = "exclude_self") -> AlgoConfig:
    """SPO (Self-Play Preference Optimization, the Minimaximalist approach) in the online RL loop.

    "A Minimaximalist Approach to Reinforcement Learning from Human Feedback",
    https://arxiv.org/abs/2401.04056: sample several responses from the current policy, compare them
    with a preference function, and use each response's proportion of wins as its reward in any RL
    algorithm (abstract; spec section 3). Here: the ``spo`` advantage (win rate within the prompt's
    group minus the group mean, ``r_i = (1/(K-1)) sum_{j != i} P(y_i > y_j)``) with GRPO's update
    (PPO clip 0.2, per-sequence token mean, k3 KL 0.04).

    RECONSTRUCTED: the paper's experiments are continuous control with their own RL optimiser, and
    no code was found; the LLM port (pool = the group, no queue of past samples, GRPO's update, the
    exclude-self convention) is ours. ``preference="intransitive"`` compares samples by the majority
    of three graded verifiable criteria (correct / length budget / format), where the Minimax Winner
    is a mixed policy no reward-maximiser reaches; ``reward_bt`` compares the task's rewards
    (Bradley-Terry, hard at ``temperature`` 0).

    Args:
        preference: ``reward_bt`` or ``intransitive``.
        temperature: Bradley-Terry temperature for ``reward_bt``.
        convention: ``exclude_self`` or ``include_self`` (SPPO's count).

    Returns:
        The ``AlgoConfig`` of the online RL loop.
    """
    return AlgoConfig(
        advantage=SPOAdvantage(preference=preference, temperature=temperature, convention=convention),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="seq_mean_token_mean"),
        regularizers=(KLPenalty(coef=0.04, estimator="k3", aggregation="seq_mean_token_mean"),),
        sampler=UniformConfig(),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="spo",
    title="A Minimaximalist Approach to Reinforcement Learning from Human Feedback",
    arxiv="2401.04056",
    status="reconstructed",
    build=spo,
    summary="Each sample's win rate against its group under a preference function as the reward; GRPO's PPO-clip update with k3 KL 0.04.",
)
