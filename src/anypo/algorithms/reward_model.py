"""Reward-model preset: a causal LM with a scalar head trained on preference pairs (Bradley-Terry)."""

from __future__ import annotations

from anypo.config import Preset


def reward_model(center_rewards_coef: float = 0.0):
    """Bradley-Terry reward model: ``L = -(1/P) sum_i log sigmoid(r(x, y_w) - r(x, y_l))``.

    "Training language models to follow instructions with human feedback" (InstructGPT),
    https://arxiv.org/abs/2203.02155, Eq. 1 (the reward-model loss over the K-choose-2 comparisons of
    a prompt; here one pair per prompt). ``r(x, y)`` is a bias-free linear head on the backbone's
    final hidden state at the response's last token, as TRL's ``RewardTrainer`` with
    ``AutoModelForSequenceClassification`` (checked against TRL: ``loss = -logsigmoid(r_chosen -
    r_rejected)``, mean over pairs, optional ``center_rewards_coefficient`` term
    ``c mean((r_chosen + r_rejected)^2)``; its optional per-pair margin is not implemented).

    The exported ``final/`` (backbone + ``reward_head.safetensors``) is a preference source:
    ``--oracle.kind reward_model --oracle.reward-model DIR`` in the online preference loop, the proxy
    reward of an over-optimisation study with the verifier as gold.

    Deviations: the head is initialised ``N(0, 1/H)`` from the run's seed (transformers: the model's
    ``initializer_range``); the loss is normalised by the step's global pair count (micro-batch
    invariant), where TRL averages each micro-batch.

    Args:
        center_rewards_coef: TRL's reward centring coefficient (0: off).

    Returns:
        The ``RMAlgoConfig`` of the reward-model loop.
    """
    from anypo.train_rm import RMAlgoConfig

    return RMAlgoConfig(center_rewards_coef=center_rewards_coef)


PRESET = Preset(
    name="reward_model",
    title="Training language models to follow instructions with human feedback",
    arxiv="2203.02155",
    status="verified",
    build=reward_model,
    summary="Causal LM + scalar head on the last token, Bradley-Terry loss on preference pairs; held-out accuracy.",
    kind="reward_model",
)
