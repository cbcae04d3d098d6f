"""The ``countdown`` task: reach a target with given numbers and ``+ - * /``.

Each puzzle is built from a solution: ``terms`` random numbers are combined (all of them, random
order, tree and operators, exact integer steps only) into the target, so every puzzle is solvable.
The answer is checked by :func:`anypo.rewards.countdown.check_countdown`, which accepts any correct
expression using each number at most once. The solution the puzzle was built from gives the
example's worked solution (one operation per step) and hint ladder.
"""

from __future__ import annotations

import random

from anypo.rewards import Countdown, Format
from anypo.tasks.base import EXPRESSION_INSTRUCTION, Example, ProceduralTask
from anypo.tasks.solutions import countdown_worked
from anypo.types import PartConfig

__all__ = ["CountdownTask"]


def _combine(rng: random.Random, numbers: list[int]) -> tuple[str, int] | None:
    """A random expression using every number once, or None when a step is not an integer >= 0."""
    items: list[tuple[str, int]] = [(str(v), v) for v in numbers]
    rng.shuffle(items)
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (lt, lv), (rt, rv) = items[i], items[j]
        op = rng.choice("+-*/")
        if op == "+":
            value = lv + rv
        elif op == "-":
            value = lv - rv
        elif op == "*":
            value = lv * rv
        else:
            if rv == 0 or lv % rv:
                return None
            value = lv // rv
        if value < 0:
            return None
        items = [it for k, it in enumerate(items) if k not in (i, j)]
        items.append((f"({lt} {op} {rt})", value))
    text, value = items[0]
    return (text[1:-1] if text.startswith("(") else text), value


class CountdownTask(ProceduralTask):
    """``Using the numbers [a, b, c], make an expression equal to T.`` (defaults: 3 numbers of 1
    digit, targets 1-100; ``digits=2, terms=4`` is close to TinyZero's setting)."""

    default_instruction = EXPRESSION_INSTRUCTION

    @property
    def max_target(self) -> int:
        """Largest target: 100 for 1-digit numbers, 1000 for 2 digits, ..."""
        return 10 ** (self.digits + 1)

    def generate(self, rng: random.Random) -> Example:
        if self.terms < 2 or self.digits < 1:
            raise ValueError(f"countdown needs terms >= 2 and digits >= 1, got {self.terms} and {self.digits}")
        while True:
            numbers = [rng.randint(1, 10**self.digits - 1) for _ in range(self.terms)]
            built = _combine(rng, numbers)
            if built is not None and 1 <= built[1] <= self.max_target:
                break
        solution, target = built
        question = (
            f"Using the numbers {numbers}, write an expression that equals {target}. "
            "You may use + - * / and each number at most once."
        )
        key = f"{sorted(numbers)}->{target}"
        worked = countdown_worked(solution, target)
        meta = {"numbers": numbers, "target": target}
        return self.make_example(question, solution, key, meta, worked.solution(solution), worked.hints())

    def default_reward(self) -> tuple[tuple[PartConfig, float], ...]:
        """``countdown`` correctness (weight 1) and a ``format`` bonus (weight 0.1)."""
        return ((Countdown(), 1.0), (Format(), 0.1))
