"""LLDS preset: GRPO plus the lazy-likelihood-displacement regulariser."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.regularizers import LLDS


def llds(gate: str = "action", coef: float = 0.2, minibatch_prompts: int | None = 256) -> AlgoConfig:
    """LLDS: the ``grpo`` preset with the LLDS hinge added to its loss.

    "On Group Relative Policy Optimization Collapse in Agent Search: The Lazy Likelihood-Displacement",
    https://arxiv.org/abs/2512.04220; verified against the official code
    (github.com/vengdeng/LLDS-On-Group-Relative-Policy-Optimization-Collapse-in-Search-R1,
    ``dp_actor.py::update_policy``, ``train_grpo_nqhot.sh``): ``L = L_GRPO + lambda *
    agg(gate * max(0, lp_old - lp))`` on tokens with ``A >= 0``, lambda 0.2, action-level gate
    (``ISCHUNK=true``), no answer-span weight (``MASK_ANS=false``).

    Base: the ``grpo`` preset unchanged (group z-score, PPO clip 0.2, k3 KL 0.04, per-sequence token
    mean), so that a comparison with ``grpo`` isolates the regulariser. The official Search-R1 run
    differs in its base: KL 0.001 (``low_var_kl``) and token-mean aggregation, G = 5, lr 1e-6.

    Mini-batches: the term is 0 at the first update of a rollout batch (``lp == lp_old``); the official
    run takes 2 updates per batch (mini-batches of 256 of its 512 prompts). The preset states that size
    (``minibatch_prompts=256``), which is one on-policy update, and so no LLDS at all, at any batch of at
    most 256 prompts: pass ``--algo.minibatch-prompts`` B/2 (or 1) for the regime the method acts in.

    Args:
        gate: ``action`` (A-gate, the paper's best) or ``response`` (R-gate).
        coef: lambda.
        minibatch_prompts: mini-batch size in prompts (None: one update per rollout batch).
    """
    base = grpo()
    return dataclasses.replace(
        base,
        regularizers=(*base.regularizers, LLDS(coef=coef, gate=gate, aggregation="token_mean")),
        minibatch_prompts=minibatch_prompts,
    )


PRESET = Preset(
    name="llds",
    title="On Group Relative Policy Optimization Collapse in Agent Search: The Lazy Likelihood-Displacement",
    arxiv="2512.04220",
    status="verified",
    build=llds,
    summary="GRPO plus a hinge keeping non-negative-advantage tokens' likelihood from falling (action-gated, lambda 0.2).",
)
