"""iGRPO's two-stage rollout: drafts first, then refinements conditioned on the best draft."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from anypo.rollout.groups import Request
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.types import PartConfig, RolloutBatch

__all__ = ["DraftRefine", "DraftRefineConfig", "best_draft"]

REFINE_TEMPLATE = "Here is a previous attempt at this problem:\n{draft}\nWrite an improved solution."


@dataclass(frozen=True)
class DraftRefineConfig(PartConfig):
    """iGRPO: sample drafts, keep the best, train on refinements conditioned on it.

    Paper: "iGRPO: Iterative Group Relative Policy Optimization" (NVIDIA),
    https://arxiv.org/abs/2602.09000. RECONSTRUCTED from the abstract and a summary (no code found):
    stage 1 samples ``N`` drafts of the plain prompt (no gradient) and scores them with the same
    reward; ``d* = argmax_j R(d_j)``; stage 2 samples ``G`` refinements of ``q + d*`` (the draft is
    prompt text: never in the loss), and GRPO trains on the refinements only. Inference is ordinary
    single-pass generation.

    Choices (UNVERIFIED): the budget of a group is matched by splitting it, ``draft_share`` of the
    requested samples as drafts (at least 1) and the rest (at least 2) as refinements; ties go to the
    first draft; the best draft is used even when every draft failed (``skip_failed=False``; with
    True such groups are refined from the plain prompt); the template is
    ``"Here is a previous attempt at this problem:\\n<draft>\\nWrite an improved solution."``
    after the question.
    """

    draft_share: float = 0.5
    """Share of a group's samples spent on drafts (matched budget)."""
    skip_failed: bool = False
    """Refine from the plain prompt when no draft has a positive reward."""

    def __post_init__(self) -> None:
        if not 0.0 < self.draft_share < 1.0:
            raise ValueError(f"draft_share must be in (0, 1), got {self.draft_share}")

    @property
    def min_group_size(self) -> int:
        """A group needs at least 1 draft and 2 refinements (the config check refuses smaller G)."""
        return 3


def best_draft(rewards: Sequence[float]) -> int:
    """Index of the highest reward (the first on ties)."""
    return max(range(len(rewards)), key=lambda j: (rewards[j], -j))


@ROLLOUTS.register("draft_refine", config=DraftRefineConfig)
class DraftRefine(RolloutPart):
    """iGRPO's draft-then-refine rollout (see :class:`DraftRefineConfig`)."""

    cfg: DraftRefineConfig

    def split(self, n: int) -> tuple[int, int]:
        """(drafts, refinements) of a group of ``n`` samples: refinements >= 2 when n >= 3."""
        drafts = max(1, min(n - 2, round(self.cfg.draft_share * n))) if n >= 3 else 1
        return drafts, max(n - drafts, 1)

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        plan = [self.split(r.n) for r in requests]
        drafts = self.groups.collect(
            [Request(r.index, d, r.insert, r.prefix) for r, (d, _) in zip(requests, plan, strict=True)], seed, 0
        )
        texts, rewards = drafts.extras["text"], drafts.rewards.tolist()
        refine = []
        row = 0
        for r, (d, g) in zip(requests, plan, strict=True):
            k = row + best_draft(rewards[row : row + d])
            use = not (self.cfg.skip_failed and rewards[k] <= 0)
            insert = REFINE_TEMPLATE.format(draft=texts[k]) if use else ""
            refine.append(Request(r.index, g, "\n\n".join(x for x in (r.insert, insert) if x), r.prefix))
            self.add("igrpo_best_draft_reward_sum", rewards[k])
            row += d
        batch = self.groups.collect(refine, seed + 65_537, group_offset)
        self.add("igrpo_drafts", drafts.num_seqs)
        self.add("igrpo_groups", len(requests))
        self.add("igrpo_draft_reward_sum", float(drafts.rewards.sum()))
        return batch

    def pop_metrics(self) -> dict[str, float]:
        """``rollout/igrpo_drafts``, the drafts' mean reward ``rollout/igrpo_draft_reward_mean`` and the
        chosen drafts' mean reward ``rollout/igrpo_best_draft_reward_mean`` (per group)."""
        out = super().pop_metrics()
        n = out.get("rollout/igrpo_drafts", 0.0)
        total = out.pop("rollout/igrpo_draft_reward_sum", 0.0)
        best = out.pop("rollout/igrpo_best_draft_reward_sum", 0.0)
        if n:
            out["rollout/igrpo_draft_reward_mean"] = total / n
        groups = out.pop("rollout/igrpo_groups", 0.0)
        if groups:
            out["rollout/igrpo_best_draft_reward_mean"] = best / groups
        return out
