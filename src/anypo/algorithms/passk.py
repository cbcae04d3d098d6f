"""Pass@k Training preset."""

from __future__ import annotations

from anypo.advantages import PassKAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def passk(k: int = 4) -> AlgoConfig:
    """Pass@k Training with the analytical advantage, on GRPO's clipped surrogate.

    "Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large Reasoning
    Models", https://arxiv.org/abs/2508.10751, Eq. 8-9 (see ``anypo.advantages.PassKAdvantage``);
    the official code (github.com/RUCAIBox/Passk_Training ``code/passk_adv.py``) replaces verl's GRPO
    advantage and keeps the rest of the verl recipe: ``ppo_clip`` 0.2, token mean, no KL.

    ``k = 4`` is UNVERIFIED: the paper's experimental section could not be read and the code takes
    ``K`` as an argument. The advantage needs groups larger than ``k`` (``--samples-per-prompt``
    > k): at ``k`` = G every advantage is 0 (a single k-subset), and a smaller group is an error.

    Args:
        k: the subset size of the pass@k reward.
    """
    return AlgoConfig(
        advantage=PassKAdvantage(k=k),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="passk",
    title="Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large Reasoning Models",
    arxiv="2508.10751",
    status="verified",
    build=passk,
    summary="Analytical advantage of the pass@k reward of k-subsets of each group (k = 4): explores more.",
)
