"""RLOO preset."""

from __future__ import annotations

from anypo.advantages import RLOOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import Reinforce
from anypo.samplers import UniformConfig


def rloo() -> AlgoConfig:
    """RLOO: leave-one-out baseline with the on-policy REINFORCE loss on whole sequences.

    "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
    LLMs", https://arxiv.org/abs/2402.14740, Sec. 3.2: ``A_i = R_i - mean_{j != i} R_j``, loss
    ``-(1/N) sum_i A_i log pi(y_i | x)`` (``seq_mean_token_sum``), one update per batch. The paper's
    RLHF setup folds a KL penalty into the reward; for verifiable rewards we leave it out (add a
    ``kl`` regularizer to restore one). verl and TRL instead run RLOO advantages through the PPO
    clipped loss (token-mean), which allows several updates per batch.
    """
    return AlgoConfig(
        advantage=RLOOAdvantage(),
        policy_loss=Reinforce(aggregation="seq_mean_token_sum"),
        sampler=UniformConfig(),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="rloo",
    title="Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs",
    arxiv="2402.14740",
    status="verified",
    build=rloo,
    summary="REINFORCE with a leave-one-out group baseline, one on-policy update per batch.",
)
