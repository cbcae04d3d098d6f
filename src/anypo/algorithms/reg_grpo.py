"""Reg-GRPO preset: DeepVideo-R1's regressive loss with its difficulty-aware augmentation."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import RegGRPO
from anypo.rollout import DifficultyAugConfig
from anypo.samplers import UniformConfig


def reg_grpo() -> AlgoConfig:
    """Reg-GRPO: regress GRPO's advantage with ``beta`` times the sequence log-ratio; no clip, no min;
    groups whose advantages vanish are re-issued harder (all right) or with a hint (all wrong).

    "DeepVideo-R1: Video Reinforcement Fine-Tuning via Difficulty-aware Regressive GRPO",
    https://arxiv.org/abs/2506.07464: ``loss = (1/N) sum_i (A_i - beta sum_t (lp_it - lp_old_it))^2``
    with ``A`` the GRPO advantage. Reconstructed from the abstract (see
    :class:`anypo.losses.RegGRPO`): the prediction's form, ``beta = 1`` and the absence of a KL term
    are UNVERIFIED.

    Difficulty-aware augmentation (:class:`anypo.rollout.DifficultyAugConfig`, reconstructed): an
    all-right group is regenerated with a distractor (another training question as an "unrelated
    note") after the question, an all-wrong group with the first hint of its ladder; the group keeps
    the re-issued prompt and samples. The text forms of "harder" and "guidance" are UNVERIFIED (the
    paper augments videos and prompts).

    Mini-batches: at the first update of a step the log-ratio is 0 and the gradient is 2 beta times
    REINFORCE's; the regression (which stops pulling once a response's log-likelihood moved by
    ``A_i / beta``) acts from the second update on. No size could be read: the preset keeps GRPO's one
    update per rollout batch; pass ``--algo.minibatch-prompts 1`` (or ``--algo.ppo-epochs 2``) to
    see the regression act.
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(),
        policy_loss=RegGRPO(beta=1.0, anchor="old", length_normalize=False, aggregation="seq_mean_token_mean"),
        sampler=UniformConfig(),
        rollout=DifficultyAugConfig(harder=True, easier=True),
        ppo_epochs=1,
    )


PRESET = Preset(
    name="reg_grpo",
    title="DeepVideo-R1: Video Reinforcement Fine-Tuning via Difficulty-aware Regressive GRPO",
    arxiv="2506.07464",
    status="reconstructed",
    build=reg_grpo,
    summary="Regress the group advantage with beta * the sequence log-ratio; all-equal groups re-issued harder or hinted.",
)
