"""SAFE preset (double soft-min critic advantage, PPO clip, entropy-aware predictive KL controller)."""

from __future__ import annotations

from anypo.advantages import SAFEAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip, SAFEValueLoss
from anypo.policy import CriticConfig
from anypo.regularizers import SAFEControl
from anypo.samplers import UniformConfig


def safe(penalty: str = "code") -> AlgoConfig:
    """SAFE: ``A = standardise(R^ - V)``, PPO clip 0.2, Huber value loss on a double soft-min critic,
    KL controller and entropy bonus.

    "SAFE: Stable Alignment Finetuning with Entropy-Aware Predictive Control for RLHF",
    https://arxiv.org/abs/2602.04651; hyperparameters from the official code (github.com/ryyzn9/SAFE
    ``notebooks/mainD.py``, ``Config``): clip 0.2, value clip 0.2, Huber 0.5, 0.5 * value loss,
    entropy coefficient 0.01, 2 epochs per batch, KL base threshold 0.3, entropy floor 2.0, PID gains
    0.3 / 0.01 / 0.05, soft-min alpha 0.3. Policy and critic learning rates 1e-5 (run settings: ``--lr
    1e-5 --critic-lr 1e-5``).

    The critic is the code's ``DoubleCritic`` (``AlgoConfig.critic``, :class:`anypo.policy.CriticConfig`):
    two heads LayerNorm -> Linear(h, h/4) -> GELU -> Linear(h/4, 1) on the last hidden state, combined
    by ``V = -0.3 (logsumexp(-v1 / 0.3, -v2 / 0.3) - log 2)``, valuing the state after the last response
    token (the whole sequence); the value loss trains both heads through the soft-min. Deviations, see
    the parts: the heads sit on a copy of the policy's trunk trained by its own optimizer (the code puts
    them on the policy's own last hidden state, so its value loss also moves the policy's LoRA
    weights), no Polyak target critic (the code keeps one that its loss never reads), the controller's
    penalty without gradient as in the code (``penalty="grad"``: a differentiable reading, UNVERIFIED).

    Args:
        penalty: "code" (the official constant penalty) or "grad".
    """
    return AlgoConfig(
        advantage=SAFEAdvantage(value_position="last"),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        regularizers=(SAFEControl(penalty=penalty, entropy_coef=0.01, aggregation="token_mean"),),
        value_loss=SAFEValueLoss(cliprange=0.2, huber_delta=0.5, coef=0.5, value_position="last"),
        sampler=UniformConfig(),
        critic=CriticConfig(heads=2, combine="soft_min", alpha=0.3, head="layernorm_mlp", state="after"),
        ppo_epochs=2,
    )


PRESET = Preset(
    name="safe",
    title="SAFE: Stable Alignment Finetuning with Entropy-Aware Predictive Control for RLHF",
    arxiv="2602.04651",
    status="reconstructed",
    build=safe,
    summary="Actor-critic PPO with a double soft-min critic, a running-normalised sequence advantage and SAFE's "
    "entropy-aware PID KL controller.",
)
