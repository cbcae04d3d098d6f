"""Dr. GRPO preset ("GRPO done right")."""

from __future__ import annotations

from anypo.advantages import DrGRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import PPOClip
from anypo.samplers import UniformConfig


def dr_grpo(norm_length: float | None = None) -> AlgoConfig:
    """Dr. GRPO: centred reward without std, a constant loss normaliser, no KL.

    "Understanding R1-Zero-Like Training: A Critical Perspective", https://arxiv.org/abs/2503.20783,
    Sec. 3.2: removes GRPO's ``1/|o_i|`` (length bias) and ``1/std(R)`` (difficulty bias); the loss
    is ``sum_i sum_t m L / (N * L_max)`` (``seq_mean_token_sum_norm``). eps = 0.2; no KL (beta = 0,
    as spec'd; UNVERIFIED against the PDF). ``norm_length`` is the constant ``L_max``; None (the
    default) takes the run's generation budget ``max_new_tokens``, which the online loop puts in
    every mini-batch's loss scale, as the paper and verl do: a constant, never the longest response
    of the batch (which would change step to step and re-couple the update size to length). verl
    divides by ``L_max`` only (no ``1/N``), a constant factor that changes the effective learning rate.

    Args:
        norm_length: the constant L_max of the aggregation (e.g. ``max_new_tokens``).
    """
    return AlgoConfig(
        advantage=DrGRPOAdvantage(),
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.2, aggregation="seq_mean_token_sum_norm", norm_length=norm_length),
        sampler=UniformConfig(),
    )


PRESET = Preset(
    name="dr_grpo",
    title="Understanding R1-Zero-Like Training: A Critical Perspective",
    arxiv="2503.20783",
    status="verified",
    build=dr_grpo,
    summary="GRPO without std normalisation or per-length division (constant normaliser), no KL.",
)
