"""Difficulty-graded task mixes: ``graded_arithmetic`` and ``graded_countdown``.

A graded task holds one procedural task per level, from easy to hard, and interleaves them: example
``j`` of either split belongs to level ``j mod L`` (``L`` levels in use), so every prefix of a split
is balanced across levels. Each example carries ``meta["difficulty"]`` (the level's index in the
full level table, also when ``options={"levels": ...}`` selects a subset) so that samplers,
curricula and reports can split by difficulty (``anypo.evaluate.pass_at_k_by_difficulty`` reports
``eval/pass@1/level_3``).

Each level draws from its own seeded stream (named ``<task>/level_<i>``) and holds out its own
share of ``num_heldout`` problems, so the held-out split has the same levels as the training split
and its hard subset can be evaluated on its own. Prompts, answers, solutions, hints and the reward
are the level task's (``arithmetic`` with fixed digits, terms and operators; ``countdown`` with
fixed digits and numbers).

Levels (index: setting):

``graded_arithmetic`` (``Calculate <expression>.``, operators ``+`` and ``-`` only, parentheses
where they change the value):

- 0: 2 operands of 2 digits, ``+`` only (``Calculate 47 + 85.``)
- 1: 2 operands of 3 digits, ``+ -``
- 2: 3 operands of 4 digits, ``+ -``
- 3: 3 operands of 5 digits, ``+ -`` (``Calculate 48213 - (90412 + 13377).``)

``graded_countdown`` (numbers ``1 .. 10^digits - 1``, target ``1 .. 10^(digits+1)``):

- 0: 3 numbers of 1 digit
- 1: 4 numbers of 1 digit
- 2: 5 numbers of 2 digits
- 3: 6 numbers of 2 digits

The hardest levels are chosen to be far beyond SmolLM2-135M-Instruct (which is right on about 1 in
32 untrained samples of 2-digit addition, docs/tasks.md); the starting pass@1 per level is for the
lead to measure, not asserted here.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from anypo.tasks.arithmetic import ArithmeticTask
from anypo.tasks.base import Example, ProceduralTask, Task, TaskConfig
from anypo.tasks.countdown import CountdownTask
from anypo.types import PartConfig

__all__ = ["GradedArithmeticTask", "GradedCountdownTask", "GradedTask", "Level"]


@dataclass(frozen=True)
class Level:
    """One difficulty level: operand digits, operand count and (arithmetic) operators."""

    digits: int
    terms: int
    ops: str = "+-*"

    def describe(self, unit: str) -> str:
        ops = f", {' '.join(self.ops)}" if unit == "operands" else ""
        return f"{self.terms} {unit} of {self.digits} digit{'s' if self.digits > 1 else ''}{ops}"


class GradedTask(Task):
    """Levels of one procedural task, interleaved; see the module docstring."""

    base: type[ProceduralTask] = ArithmeticTask
    levels: tuple[Level, ...] = ()
    unit = "operands"

    def __init__(self, config: TaskConfig):
        super().__init__(config)
        if config.digits is not None or config.terms is not None:
            raise ValueError(
                f"task {config.name!r}: digits/terms are set by its levels; choose levels with "
                f"options={{'levels': '0,3'}} instead"
            )
        unknown = set(config.options) - {"levels"}
        if unknown:
            raise ValueError(f"task {config.name!r}: unknown options {sorted(unknown)}; the only option is 'levels'")
        self.selected = self._parse_levels(config.options.get("levels"))
        self.level_tasks: dict[int, ProceduralTask] = {}
        n_levels = len(self.selected)
        for pos, i in enumerate(self.selected):
            level = self.levels[i]
            share = config.num_heldout // n_levels + (pos < config.num_heldout % n_levels)
            sub_cfg = dataclasses.replace(
                config,
                name=f"{config.name}/level_{i}",
                digits=level.digits,
                terms=level.terms,
                num_heldout=share,
                options={},
            )
            sub = self.base(sub_cfg)
            if isinstance(sub, ArithmeticTask):
                sub.ops = level.ops
            self.level_tasks[i] = sub

    def _parse_levels(self, value: object) -> tuple[int, ...]:
        """``None`` (all), an int, or a comma-separated string of level indices."""
        n = len(self.levels)
        if value is None:
            return tuple(range(n))
        try:
            if isinstance(value, bool):
                raise ValueError
            picked = (int(value),) if isinstance(value, int) else tuple(int(v) for v in str(value).split(","))
        except ValueError:
            picked = ()
        if not picked or any(not 0 <= i < n for i in picked) or len(set(picked)) != len(picked):
            raise ValueError(
                f"task {self.config.name!r}: options levels={value!r} must be distinct level indices "
                f"0..{n - 1} as an int or a string like '0,3'"
            )
        return tuple(sorted(picked))

    def describe_levels(self) -> dict[int, str]:
        """Level index -> a short description (``3 operands of 5 digits, + -``)."""
        return {i: self.levels[i].describe(self.unit) for i in self.selected}

    def _tag(self, ex: Example, level: int) -> Example:
        meta = {**ex.meta, "task": self.name, "difficulty": level}
        return dataclasses.replace(ex, meta=meta)

    def _interleave(self, n: int, take) -> list[Example]:
        """Example ``j`` from level ``selected[j mod L]``: ``take(level_task, count)`` per level."""
        n_levels = len(self.selected)
        per = {
            i: take(self.level_tasks[i], n // n_levels + (pos < n % n_levels)) for pos, i in enumerate(self.selected)
        }
        return [
            self._tag(per[self.selected[j % n_levels]][j // n_levels], self.selected[j % n_levels]) for j in range(n)
        ]

    @functools.cached_property
    def heldout_keys(self) -> frozenset[str]:
        """Canonical keys of every level's held-out problems."""
        return frozenset().union(*(t.heldout_keys for t in self.level_tasks.values()))

    def train_examples(self, n: int | None = None) -> list[Example]:
        """``n`` training examples, levels interleaved (never a held-out problem of its level)."""
        n = self.num_train if n is None else n
        return self._interleave(n, lambda task, k: task.train_examples(k))

    def heldout_examples(self, n: int | None = None) -> list[Example]:
        """The first ``n`` of the fixed held-out set, levels interleaved."""
        n = self.config.num_heldout if n is None else n
        if n > self.config.num_heldout:
            raise ValueError(f"asked for {n} held-out examples, the task has num_heldout={self.config.num_heldout}")
        return self._interleave(n, lambda task, k: task.heldout_examples(k))

    def default_reward(self) -> tuple[tuple[PartConfig, float], ...]:
        """The level task's reward (the same for every level)."""
        return next(iter(self.level_tasks.values())).default_reward()


class GradedArithmeticTask(GradedTask):
    """``graded_arithmetic``: 2- to 5-digit ``+ -`` expressions in 4 levels (module docstring)."""

    base = ArithmeticTask
    levels = (Level(2, 2, "+"), Level(3, 2, "+-"), Level(4, 3, "+-"), Level(5, 3, "+-"))
    unit = "operands"


class GradedCountdownTask(GradedTask):
    """``graded_countdown``: countdown with 3 to 6 numbers in 4 levels (module docstring)."""

    base = CountdownTask
    default_instruction = CountdownTask.default_instruction
    levels = (Level(1, 3), Level(1, 4), Level(2, 5), Level(2, 6))
    unit = "numbers"
