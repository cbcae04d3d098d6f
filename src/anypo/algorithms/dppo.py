"""DPPO preset."""

from __future__ import annotations

from anypo.advantages import DrGRPOAdvantage
from anypo.config import AlgoConfig, Preset
from anypo.losses import DPPO
from anypo.samplers import UniformConfig


def dppo() -> AlgoConfig:
    """DPPO-Binary-TV: PPO's ratio clip replaced by a trust region on the token's probability change.

    "Rethinking the Trust Region in LLM Reinforcement Learning", https://arxiv.org/abs/2602.04879,
    Eq. 13 (see ``anypo.losses.DPPO``). Settings of the authors' verl example
    (``examples/dppo_trainer/run_qwen30b_dppo.sh``): Binary-TV with delta 0.15 on both sides, the
    trust region and ratio anchored to the rollout policy (``bypass_mode``, Sec. 5.2), no ratio
    truncation (``clip_ratio_c = 10000``), Dr. GRPO advantages (no std) and
    ``seq-mean-token-sum-norm`` aggregation, no KL, 256 prompts x 16 samples per rollout in
    mini-batches of 32 prompts (8 updates), lr 1e-6. prime-rl's default loss is the same mask with
    delta 0.2 plus a squared-log-ratio KL (1e-3); SkyRL's ``dppo`` defaults to delta 0.2.
    """
    return AlgoConfig(
        advantage=DrGRPOAdvantage(),
        policy_loss=DPPO(
            divergence="tv",
            delta_low=0.15,
            delta_high=0.15,
            anchor="rollout",
            ratio_cap=None,
            aggregation="seq_mean_token_sum_norm",
        ),
        regularizers=(),
        sampler=UniformConfig(),
        ppo_epochs=1,
        minibatch_prompts=32,
    )


PRESET = Preset(
    name="dppo",
    title="Rethinking the Trust Region in LLM Reinforcement Learning",
    arxiv="2602.04879",
    status="verified",
    build=dppo,
    summary="Divergence PPO: masks tokens whose probability moved more than 0.15 (Binary-TV) toward their advantage.",
)
