"""T-PPO preset (PPO with extended GAE over partial responses carried across steps, and a value loss on
finished ones)."""

from __future__ import annotations

from anypo.advantages import EGAEAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip, TPPOValueLoss
from anypo.rollout import TPPOCarryConfig
from anypo.samplers import UniformConfig


def tppo(
    lam_actor: float = 0.95,
    lam_critic: float = 1.0,
    truncated_unfinished: bool = False,
    carry: bool = True,
    max_carries: int = 3,
    max_total_tokens: int = 0,
) -> AlgoConfig:
    """T-PPO: length-windowed generation whose unfinished responses continue in later steps, EGAE
    advantages (unfinished responses bootstrap from the critic), PPO clip, value loss on finished responses.

    "Truncated Proximal Policy Optimization", https://arxiv.org/abs/2506.15050. Reconstructed from the
    abstract (see :class:`anypo.rollout.TPPOCarryConfig`, :class:`anypo.advantages.EGAEAdvantage` and
    :class:`anypo.losses.TPPOValueLoss`); all settings UNVERIFIED:

    * generation window = the run's ``sampling.max_new_tokens`` (``W``); a response the window cuts is
      unfinished (``extras["unfinished"]``) and is continued next step from its tokens so far (masked
      out of the loss), for at most ``max_carries`` steps and ``max_total_tokens`` response tokens in
      all (0: ``W * (max_carries + 1)``); every step trains ``prompts_per_step * samples_per_prompt``
      sequences, carried continuations and fresh samples together;
    * EGAE: gamma 1, actor lambda 0.95, critic lambda 1 (VC-PPO's decoupled GAE), whitened advantages;
      an unfinished response gets no reward and bootstraps, in the step it is cut in, from the critic's
      value of the state after its last token ``V(s_l)`` (the loop fills it: ``needs_bootstrap_values``);
    * PPO clip 0.2 / 0.28 (the DAPO/VAPO team's clip-higher), token mean, value clip 0.5 on finished
      responses only, 2 epochs.

    ``carry=False`` generates every response to the end within the step (EGAE is then GAE with
    decoupled lambdas); ``truncated_unfinished=True`` also treats responses cut by the run's length
    limit as unfinished (no reward, bootstrap, no value loss) without continuing them.

    Args:
        lam_actor: GAE lambda of the advantages.
        lam_critic: GAE lambda of the value targets.
        truncated_unfinished: treat responses cut by max_new_tokens as unfinished (use with carry=False).
        carry: carry unfinished responses over to later steps (T-PPO's partial rollouts).
        max_carries: steps a response may be carried over.
        max_total_tokens: total response length over all windows (0: window * (max_carries + 1)).
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
        rollout=TPPOCarryConfig(max_carries=max_carries, max_total_tokens=max_total_tokens) if carry else None,
        ppo_epochs=2,
    )


PRESET = Preset(
    name="tppo",
    title="Truncated Proximal Policy Optimization",
    arxiv="2506.15050",
    status="reconstructed",
    build=tppo,
    summary="PPO with extended GAE: responses cut by a per-step window continue in later steps and bootstrap "
    "from the critic, which trains on finished ones.",
)
