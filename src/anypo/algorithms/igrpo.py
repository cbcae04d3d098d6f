"""iGRPO preset: drafts, then GRPO on refinements conditioned on the best draft."""

from __future__ import annotations

import dataclasses

from anypo.algorithms.grpo import grpo
from anypo.config import AlgoConfig, Preset
from anypo.rollout import DraftRefineConfig


def igrpo() -> AlgoConfig:
    """GRPO trained on refinements: each group's budget is split into drafts of the plain prompt (never
    trained on) and refinements of the prompt with the best draft appended; GRPO on the refinements.

    "iGRPO: Iterative Group Relative Policy Optimization", https://arxiv.org/abs/2602.09000
    (NVIDIA). Reconstructed from the abstract and a summary (no code found): half of each group's
    samples as drafts, ties to the first draft, the best draft used even when all drafts fail, the
    refinement template (see :class:`anypo.rollout.DraftRefineConfig`) are UNVERIFIED. The abstract
    says the wrapper works on GRPO and its variants; the loss here is GRPO's (preset ``grpo``).
    Evaluation is ordinary single-pass generation (as the paper's inference).
    """
    return dataclasses.replace(grpo(), rollout=DraftRefineConfig(draft_share=0.5, skip_failed=False))


PRESET = Preset(
    name="igrpo",
    title="iGRPO: Iterative Group Relative Policy Optimization",
    arxiv="2602.09000",
    status="reconstructed",
    build=igrpo,
    summary="GRPO on refinements of each prompt conditioned on its best draft (half the samples are drafts).",
)
