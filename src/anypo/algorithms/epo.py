"""EPO preset: GRPO plus the entropy bonus, entropy smoothing and phase weighting of EPO."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.regularizers import EPO


def epo(smoothing: str = "code", smooth_from_turn: int = 0, phase_steps: int = 150) -> AlgoConfig:
    """EPO: the ``grpo`` preset with EPO's entropy term added to its loss.

    "EPO: Entropy-regularized Policy Optimization for LLM Agents Reinforcement Learning",
    https://arxiv.org/abs/2509.22576; verified against the official code (github.com/WujiangXu/EPO,
    ``dp_actor.py``, ``ray_trainer.py``, README recipes): ``L = L_GRPO - c_H (agg(H) - c_s agg(P))``
    with ``P`` the out-of-band penalty against the per-turn entropy history ``H_hist`` and the phase
    weight ``w(e)``; ``c_H = 0.001`` (``entropy_coeff``), ``c_s = 1``, band ``(0, 2 H_hist)``, penalty
    0.1, token mode, phase weights on (the ALFWorld recipe), ``E = 150``.

    In the official code the smoothing penalty is a constant with respect to the weights: it changes
    the loss value, not the gradient, so what trains beyond GRPO is the entropy bonus
    (``smoothing="code"``, the default). ``smoothing="hinge"`` is anypo's differentiable band penalty,
    a design of ours (see :class:`anypo.regularizers.EPO`).

    Single-turn: every token is turn 0 and the history is one running mean of the token-mean entropy.
    The code smooths only turns ``>= 25`` (its ``max_step // 2``), which never happens on single-turn
    data; the preset smooths every turn (``smooth_from_turn=0``). The multi-turn form needs only
    ``extras["turn_ids"]`` from the rollout.

    Base: the ``grpo`` preset unchanged (the official recipes run verl-agent's PPO or GRPO on ALFWorld /
    ScienceWorld), so that a comparison with ``grpo`` isolates the entropy term.

    Args:
        smoothing: ``code`` (official: no gradient) or ``hinge`` (anypo's differentiable variant).
        smooth_from_turn: smooth tokens of turns >= this (the code: 25).
        phase_steps: E of the phase weight, in optimizer steps (the code: 150 epochs).
    """
    base = grpo()
    reg = EPO(
        coef=0.001,
        smooth=True,
        smooth_coef=1.0,
        min_ratio=0.0,
        max_ratio=2.0,
        penalty=0.1,
        mask_mode="token",
        smoothing=smoothing,
        phase_weights=True,
        phase_steps=phase_steps,
        smooth_from_turn=smooth_from_turn,
        aggregation="token_mean",
    )
    return dataclasses.replace(base, regularizers=(*base.regularizers, reg))


PRESET = Preset(
    name="epo",
    title="EPO: Entropy-regularized Policy Optimization for LLM Agents Reinforcement Learning",
    arxiv="2509.22576",
    status="verified",
    build=epo,
    summary="GRPO plus an entropy bonus and a penalty on entropy outside a band around its per-turn history, phase-weighted.",
)
