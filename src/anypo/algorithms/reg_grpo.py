"""Reg-GRPO preset (DeepVideo-R1's loss; its difficulty-aware augmentation comes later)."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import RegGRPO
from anypo.samplers import UniformConfig


def reg_grpo() -> AlgoConfig:
    """Reg-GRPO: regress GRPO's advantage with ``beta`` times the sequence log-ratio; no clip, no min.

    "DeepVideo-R1: Video Reinforcement Fine-Tuning via Difficulty-aware Regressive GRPO",
    https://arxiv.org/abs/2506.07464: ``loss = (1/N) sum_i (A_i - beta sum_t (lp_it - lp_old_it))^2``
    with ``A`` the GRPO advantage. Reconstructed from the abstract (see
    :class:`anypo.losses.RegGRPO`): the prediction's form, ``beta = 1`` and the absence of a KL term
    are UNVERIFIED.

    Mini-batches: at the first update of a step the log-ratio is 0 and the gradient is 2 beta times
    REINFORCE's; the regression (which stops pulling once a response's log-likelihood moved by
    ``A_i / beta``) acts from the second update on. No size could be read: the preset keeps GRPO's one
    update per rollout batch; pass ``--algo.minibatch-prompts 1`` (or ``--algo.ppo-epochs 2``) to
    see the regression act.

    Not included: the difficulty-aware data augmentation (prompts whose group rewards are all equal
    are re-issued harder or with guidance), a data-pipeline part of the data/curricula issue.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=RegGRPO(beta=1.0, anchor="old", length_normalize=False, aggregation="seq_mean_token_mean"),
        sampler=UniformConfig(),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="reg_grpo",
    title="DeepVideo-R1: Video Reinforcement Fine-Tuning via Difficulty-aware Regressive GRPO",
    arxiv="2506.07464",
    status="reconstructed",
    build=reg_grpo,
    summary="Regress the group advantage with beta * the sequence log-ratio: no clip, no min (augmentation pending).",
)
