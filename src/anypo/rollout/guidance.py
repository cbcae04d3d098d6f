"""Guidance rollout parts: hints and partial solutions for the groups the policy cannot solve.

Both parts generate the drawn groups as they are, find the groups whose samples are all wrong (their
advantage would be 0: the "learning cliff"), and regenerate them with guidance inserted into the
prompt (``Request.insert``: prompt tokens, never in the loss). They differ in what they insert and
what they replace:

* :class:`ScafHints` (Scaf-GRPO): one sample per rung of the example's hint ladder, the first correct
  one (lowest rung) replaces the group's first sample, with its hinted prompt;
* :class:`GHPOHints` (GHPO): the whole group is regenerated with a growing prefix of the reference
  solution (25%, 50%, 75% of its characters) until some sample is right; the group keeps the last
  stage it was regenerated at, prompt and samples.

"All wrong" is judged by the task's correctness term (``extras["correct"]``, else ``reward >= 1``),
not by the total reward: a format bonus would hide an all-wrong group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from anypo.rollout.groups import Request, concat_batches
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.samplers.stats import correctness
from anypo.types import PartConfig, RolloutBatch

__all__ = [
    "GHPOConfig",
    "GHPOHints",
    "ScafConfig",
    "ScafHints",
    "all_wrong_groups",
    "ladder_levels",
    "solution_prefix",
    "splice",
]


def all_wrong_groups(batch: RolloutBatch) -> list[int]:
    """Group ids (in order of first appearance) whose every sample is wrong."""
    right = correctness(batch)
    order: list[int] = []
    solved: dict[int, bool] = {}
    for g, c in zip(batch.group_ids.tolist(), right, strict=True):
        if g not in solved:
            order.append(g)
            solved[g] = False
        solved[g] = solved[g] or c >= 1.0
    return [g for g in order if not solved[g]]


def splice(
    batch: RolloutBatch, rows: Sequence[int], new: RolloutBatch, new_rows: Sequence[int], pad: int
) -> RolloutBatch:
    """``batch`` with row ``rows[k]`` replaced by row ``new_rows[k]`` of ``new`` (prompt, response and
    every per-row field), keeping the replaced row's group id and the row order."""
    if not rows:
        return batch
    both = concat_batches([batch, new], pad)
    gids = both.group_ids.clone()
    index = list(range(batch.num_seqs))
    for r, s in zip(rows, new_rows, strict=True):
        gids[batch.num_seqs + s] = batch.group_ids[r]
        index[r] = batch.num_seqs + s
    both.group_ids = gids
    return both.select(torch.tensor(index, dtype=torch.long))


def _first_rows(batch: RolloutBatch) -> dict[int, list[int]]:
    """Group id -> its row indices, in order."""
    rows: dict[int, list[int]] = {}
    for r, g in enumerate(batch.group_ids.tolist()):
        rows.setdefault(g, []).append(r)
    return rows


# ---- Scaf-GRPO ----
@dataclass(frozen=True)
class ScafConfig(PartConfig):
    """Scaf-GRPO's tiered in-prompt hints for groups that stay unsolved.

    Paper: "Scaf-GRPO: Scaffolded Group Relative Policy Optimization for Enhancing LLM Reasoning",
    https://arxiv.org/abs/2510.19807; official code https://github.com/dvlab-research/Scaf-GRPO
    (``hint_mix_grpo/trainer/ray_trainer.py::fit``, hint block; ``build_new_message``). After the
    normal generation, from step ``warmup_steps + 1`` on, every group whose samples are all wrong
    gets one sample per hint level ``1..L`` (prompt = question + the level's hint); if any is right,
    the one at the lowest level ``l*`` replaces the group's first sample, prompt included
    (``replace_num=1``, ``replace_hint_prompt=False``); else the group stays as it is.

    Levels: the code's 8 levels are knowledge hints with 1..4 parts, then solution hints with 1..4
    parts (the planning tier of the paper is commented out in the code). Here the levels are the
    example's own hint ladder (``Example.hints``: method hints, then the first 1, 2, ... solution
    steps), weakest first; a ladder longer than ``max_levels`` is thinned to ``max_levels`` evenly
    spaced rungs, first and last kept (``ladder_levels``). The hint is inserted as ``Hint: <text>``
    after the question. Prompts without hints are left as they are.

    ``warmup_steps``: the code's script uses 50 (of a run of hundreds of steps); the preset uses
    fewer for 30-step runs (see ``anypo.algorithms.scaf_grpo``).
    """

    warmup_steps: int = 50
    """Hints start after this many steps (code ``warmup_steps=50``)."""
    max_levels: int = 8
    """Hint levels tried per stuck group, one sample each (code: 8)."""
    replace_num: int = 1
    """Samples of a rescued group replaced by hinted ones (code ``replace_num=1``)."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.max_levels < 1 or self.replace_num < 1:
            raise ValueError(
                f"need warmup_steps >= 0, max_levels >= 1, replace_num >= 1; got {self.warmup_steps}, "
                f"{self.max_levels}, {self.replace_num}"
            )


def ladder_levels(n_hints: int, max_levels: int) -> list[int]:
    """Indices of the rungs used: all when ``n_hints <= max_levels``, else ``max_levels`` evenly
    spaced ones with the first and the last (``round(k (n - 1) / (max_levels - 1))``)."""
    if n_hints <= max_levels:
        return list(range(n_hints))
    if max_levels == 1:
        return [n_hints - 1]
    return sorted({int(round(k * (n_hints - 1) / (max_levels - 1))) for k in range(max_levels)})


@ROLLOUTS.register("scaf_hints", config=ScafConfig)
class ScafHints(RolloutPart):
    """Scaf-GRPO's hint rescue of all-wrong groups (see :class:`ScafConfig`)."""

    cfg: ScafConfig

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        batch = self.groups.collect(requests, seed, group_offset)
        if step <= self.cfg.warmup_steps:
            return batch
        stuck = all_wrong_groups(batch)
        rows_of = _first_rows(batch)
        index_of = {g: int(batch.extras["prompt_index"][rows_of[g][0]]) for g in stuck}
        asks: list[tuple[int, int]] = []  # (group, level)
        hinted: list[Request] = []
        for g in stuck:
            hints = self.groups.examples[index_of[g]].hints if self.groups.examples is not None else ()
            for level in ladder_levels(len(hints), self.cfg.max_levels):
                asks.append((g, level))
                hinted.append(Request(index_of[g], self.cfg.replace_num, insert=f"Hint: {hints[level]}"))
        self.add("scaf_stuck_groups", len(stuck))
        if not hinted:
            return batch
        new = self.groups.collect(hinted, seed + 104_729, group_offset=0)
        right = correctness(new)
        new_rows = _first_rows(new)  # hinted request k -> its rows
        rows, take = [], []
        for g in stuck:
            ks = [k for k, (gg, _) in enumerate(asks) if gg == g]
            win = next((k for k in ks if any(right[r] >= 1.0 for r in new_rows[k])), None)  # lowest level
            if win is None:
                continue
            good = [r for r in new_rows[win] if right[r] >= 1.0]
            rows.extend(rows_of[g][: len(good)])
            take.extend(good)
            self.add("scaf_rescued_groups", 1)
            self.add("scaf_level_sum", asks[win][1] + 1)
        return splice(batch, rows, new, take, self.groups.tokenizer.pad_token_id)

    def pop_metrics(self) -> dict[str, float]:
        """``rollout/scaf_stuck_groups``, ``rollout/scaf_rescued_groups`` and the mean rung (1-based) of
        the rescues, ``rollout/scaf_level_mean``."""
        out = super().pop_metrics()
        total = out.pop("rollout/scaf_level_sum", 0.0)
        if out.get("rollout/scaf_rescued_groups"):
            out["rollout/scaf_level_mean"] = total / out["rollout/scaf_rescued_groups"]
        return out


# ---- GHPO ----
GHPO_HINT = "The following text is the beginning part of the answer, which you can refer to for solving the problem:"


@dataclass(frozen=True)
class GHPOConfig(PartConfig):
    """GHPO's adaptive partial-solution guidance for all-wrong groups.

    Paper: "GHPO: Adaptive Guidance for Stable and Efficient LLM Reinforcement Learning",
    https://arxiv.org/abs/2507.10628; official code https://github.com/hkgc-1/GHPO
    (``src/ghpo/ghpo_trainer.py::_generate_and_score_completions``). For each ratio ``w`` in
    ``ratios`` (0.25, 0.5, 0.75), every group whose samples are all wrong is regenerated in full
    (its ``G`` samples) from ``prompt + hint text + solution[:round(len(solution) w)]`` (a prefix in
    characters, Python ``round``) and replaced by it, prompt, samples and rewards; the next ratio
    touches only the groups still all wrong.

    Deviations: the code rebuilds, at each stage, the prompts of groups solved at an earlier stage
    from the unhinted prompt while keeping their hinted completions (a quirk); here a group keeps the
    prompt of the stage whose samples it keeps (the spec's recommendation). "All wrong" uses the
    correctness term (the code: accuracy reward <= 0). Prompts without a reference solution
    (``Example.solution``) are left as they are.
    """

    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    """Shares of the reference solution shown, tried in order (code, hard-coded)."""

    def __post_init__(self) -> None:
        if not self.ratios or any(not 0.0 < w <= 1.0 for w in self.ratios):
            raise ValueError(f"ratios must be a non-empty tuple of shares in (0, 1], got {self.ratios}")


def solution_prefix(solution: str, ratio: float) -> str:
    """The first ``round(len(solution) * ratio)`` characters (Python's round, as the code)."""
    return solution[: round(len(solution) * ratio)]


@ROLLOUTS.register("ghpo_hints", config=GHPOConfig)
class GHPOHints(RolloutPart):
    """GHPO's cascade of partial-solution hints (see :class:`GHPOConfig`)."""

    cfg: GHPOConfig

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        batch = self.groups.collect(requests, seed, group_offset)
        examples = self.groups.examples
        rows_of = _first_rows(batch)
        stuck = [
            g
            for g in all_wrong_groups(batch)
            if examples is not None and examples[int(batch.extras["prompt_index"][rows_of[g][0]])].solution
        ]
        self.add("ghpo_stuck_groups", len(stuck))
        for stage, w in enumerate(self.cfg.ratios):
            if not stuck:
                break
            reqs = []
            for g in stuck:
                i = int(batch.extras["prompt_index"][rows_of[g][0]])
                hint = f"{GHPO_HINT}\n{solution_prefix(examples[i].solution, w)}"
                reqs.append(Request(i, len(rows_of[g]), insert=hint))
            new = self.groups.collect(reqs, seed + 104_729 * (stage + 1), group_offset=0)
            new_rows = _first_rows(new)
            rows = [r for g in stuck for r in rows_of[g]]
            take = [r for k in range(len(stuck)) for r in new_rows[k]]
            batch = splice(batch, rows, new, take, self.groups.tokenizer.pad_token_id)
            rows_of = _first_rows(batch)
            self.add("ghpo_regenerated_groups", len(stuck))
            still = set(all_wrong_groups(batch))
            stuck = [g for g in stuck if g in still]
        self.add("ghpo_unsolved_groups", len(stuck))
        return batch
