"""SDPO preset."""

from __future__ import annotations

from anypo.advantages import GRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import SDPO
from anypo.rollout import SDPORepromptConfig
from anypo.samplers import UniformConfig


def sdpo() -> AlgoConfig:
    """SDPO: the policy-gradient loss replaced by self-distillation toward the policy's own distribution
    given a successful sibling's answer (and / or the verifier's feedback).

    "Reinforcement Learning via Self-Distillation", https://arxiv.org/abs/2601.20802 (see
    ``anypo.losses.SDPO`` and ``anypo.rollout.SDPORepromptConfig``). Settings of the paper's
    generalisation runs (github.com/lasgroup/SDPO ``verl/trainer/config/sdpo.yaml`` and
    ``experiments/generalization/run_sdpo_all.sh``): top-100 distillation with the tail bucket,
    alpha 0.5 (generalised JSD), importance weights clipped at 2, EMA teacher with rate 0.05,
    success threshold 1.0, no reprompt with one's own answer, no environment feedback, mini-batch =
    batch (one on-policy update per step), GRPO advantages without the std (computed and logged,
    unused by the loss). Not carried over: the recipe's engine/learner rollout correction
    (``rollout_is=token``; this library's engines give the learner's log-probs), lr 1e-5 and warm-up
    (run settings).
    """
    return AlgoConfig(
        advantage=GRPOAdvantage(scale="none"),
        policy_loss=SDPO(topk=100, add_tail=True, alpha=0.5, is_clip=2.0, teacher="ema", teacher_update_rate=0.05),
        rollout=SDPORepromptConfig(success_threshold=1.0, dont_reprompt_on_self_success=True, include_feedback=False),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=None,
    )


PRESET = Preset(
    name="sdpo",
    title="Reinforcement Learning via Self-Distillation",
    arxiv="2601.20802",
    status="verified",
    build=sdpo,
    summary="Self-distillation (top-100 JSD) toward the EMA self-teacher conditioned on a successful sibling; "
    "replaces the policy-gradient loss.",
)
