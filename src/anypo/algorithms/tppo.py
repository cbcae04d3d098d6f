"""T-PPO preset (PPO with extended GAE over truncated responses and a value loss on finished ones)."""

from __future__ import annotations

from anypo.advantages import EGAEAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip, TPPOValueLoss
from anypo.samplers import UniformConfig


def tppo(lam_actor: float = 0.95, lam_critic: float = 1.0, truncated_unfinished: bool = False) -> AlgoConfig:
    """T-PPO: EGAE advantages (unfinished responses bootstrap from the critic), PPO clip, value loss on
    finished responses.

    "Truncated Proximal Policy Optimization", https://arxiv.org/abs/2506.15050. Reconstructed from the
    abstract (see :class:`anypo.advantages.EGAEAdvantage` and :class:`anypo.losses.TPPOValueLoss`):
    gamma 1, actor lambda 0.95, critic lambda 1 (VC-PPO's decoupled GAE), whitened advantages, PPO
    clip 0.2 / 0.28 (the DAPO/VAPO team's clip-higher), token mean, value clip 0.5, 2 epochs: all
    UNVERIFIED. Carrying unfinished responses over to later steps' generation (T-PPO's per-step
    window) is not built: it needs the loop. Until then every response is finished and EGAE is GAE
    with decoupled lambdas; ``truncated_unfinished=True`` treats responses cut by ``max_new_tokens``
    as unfinished (no reward, value bootstrap), T-PPO's view of a window cut.

    Args:
        lam_actor: GAE lambda of the advantages.
        lam_critic: GAE lambda of the value targets.
        truncated_unfinished: treat responses cut by max_new_tokens as unfinished.
    """
    return AlgoConfig(
        advantage=EGAEAdvantage(
            gamma=1.0,
            lam_actor=lam_actor,
            lam_critic=lam_critic,
            whiten=True,
            truncated_unfinished=truncated_unfinished,
        ),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.28, aggregation="token_mean"),
        value_loss=TPPOValueLoss(cliprange=0.5, aggregation="token_mean", truncated_unfinished=truncated_unfinished),
        sampler=UniformConfig(),
        ppo_epochs=2,
    )


PRESET = Preset(
    name="tppo",
    title="Truncated Proximal Policy Optimization",
    arxiv="2506.15050",
    status="reconstructed",
    build=tppo,
    summary="PPO with extended GAE: truncated responses bootstrap from the critic, the critic trains on finished ones.",
)
