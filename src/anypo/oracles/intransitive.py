"""An intransitive preference oracle: the majority vote of three verifiable criteria.

Each criterion ``c_k(x, y)`` grades a response (higher is better; None when it cannot be graded).
``y`` beats ``y2`` on criterion ``k`` when ``c_k(x, y) > c_k(x, y2)``, and

    P(y > y2 | x) = 1 if wins(y) > wins(y2),  0 if wins(y) < wins(y2),  1/2 otherwise,

with ``wins`` counted over the criteria (a criterion that ties counts for neither). Majority voting
over several rankings is the textbook source of intransitive preferences (Condorcet's paradox): the
responses A, B, C graded (3, 1, 2), (2, 3, 1), (1, 2, 3) on three criteria give A > B > C > A, a
rock-paper-scissors cycle with no Bradley-Terry reward that explains it, and a unique Nash
equilibrium (uniform over the cycle) that SPPO / INPO / APO target and DPO cannot represent.

With pass / fail (0/1) criteria the majority is transitive (``wins(y) - wins(y2)`` is the difference
of the number of criteria passed), so the default criteria on the arithmetic tasks are graded:

1. ``correct``: 2 for the right answer (the task's checker on the extracted answer), 1 for a wrong
   number, 0 for no number at all;
2. ``length``: ``-max(0, len(y) - budget)`` characters: every response within the budget ties, and
   beyond it shorter is better;
3. ``format``: how many of three format requirements hold: an ``Answer:`` marker, a bare number
   after the last marker, and nothing after the answer line.

A criterion that raises or returns None (or NaN) leaves the pair unjudged (NaN, counted in
``num_unjudged``). ``gold(x, y)`` is 1.0 for a correct answer, else 0.0 (the correctness alone).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from anypo.oracles.base import _check_batch

__all__ = ["Criterion", "MajorityOracle", "arithmetic_criteria", "majority_prob"]

Criterion = Callable[[Any, str], float | None]
"""``criterion(example, text) -> grade`` (higher is better) or None when it cannot grade."""

_ANSWER = re.compile(r"Answer:", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?\.?")


def correctness(x: Any, y: str) -> float:
    """2: right answer; 1: a number, but wrong; 0: no number."""
    from anypo.rewards import answers_match, extract_answer, parse_number

    pred = extract_answer(y)
    if pred is None or parse_number(pred) is None:
        return 0.0
    return 2.0 if answers_match(pred, str(x.answer), number_only=True) else 1.0


def length_within(budget: int) -> Criterion:
    """``-max(0, len(y) - budget)``: ties within ``budget`` characters, shorter is better beyond."""

    def length(x: Any, y: str) -> float:
        return -float(max(0, len(y) - budget))

    length.__name__ = f"length_within_{budget}"
    return length


def answer_format(x: Any, y: str) -> float:
    """The number of format requirements met (0-3): an ``Answer:`` marker; a bare number after the
    last marker (on its line); no text after the answer line."""
    marks = list(_ANSWER.finditer(y))
    if not marks:
        return 0.0
    after = y[marks[-1].end() :]
    line, _, rest = after.partition("\n")
    return 1.0 + float(bool(_BARE_NUMBER.fullmatch(line.strip()))) + float(not rest.strip())


def arithmetic_criteria(length_budget: int = 40) -> tuple[Criterion, Criterion, Criterion]:
    """The default criteria on the arithmetic tasks: correctness, length budget, answer format."""
    return (correctness, length_within(length_budget), answer_format)


def majority_prob(grades: Sequence[float], grades2: Sequence[float]) -> float:
    """``1`` / ``0`` / ``1/2`` by the majority of strict per-criterion wins (NaN if any grade is NaN)."""
    if any(math.isnan(g) for g in (*grades, *grades2)):
        return math.nan
    wins = sum(a > b for a, b in zip(grades, grades2, strict=True))
    losses = sum(a < b for a, b in zip(grades, grades2, strict=True))
    return 1.0 if wins > losses else 0.0 if wins < losses else 0.5


class MajorityOracle:
    """Majority over criteria (see the module docstring).

    Args:
        criteria: graders ``(example, text) -> float | None``; an odd number avoids most ties
            (three by default: :func:`arithmetic_criteria`).
        gold_fn: ``(example, text) -> float`` for ``gold``; default: 1.0 when the first criterion
            is at its top grade 2 (a correct answer), else 0.0.
    """

    def __init__(self, criteria: Sequence[Criterion] | None = None, gold_fn: Criterion | None = None):
        self.criteria = tuple(criteria) if criteria is not None else arithmetic_criteria()
        if not self.criteria:
            raise ValueError("MajorityOracle needs at least one criterion")
        self.gold_fn = gold_fn
        self.num_unjudged = 0

    def grades(self, x: Any, y: str) -> list[float]:
        """Each criterion's grade of ``y`` (NaN where it failed)."""
        out = []
        for c in self.criteria:
            try:
                g = c(x, y)
            except Exception:  # a grader never stops the run: the pair is not judged
                g = None
            out.append(math.nan if g is None else float(g))
        return out

    def prob(self, xs: Sequence[Any], ys: Sequence[str], y2s: Sequence[str]) -> Tensor:
        _check_batch(xs, ys, y2s)
        vals = [majority_prob(self.grades(x, a), self.grades(x, b)) for x, a, b in zip(xs, ys, y2s, strict=True)]
        out = torch.tensor(vals, dtype=torch.float64)
        self.num_unjudged += int(torch.isnan(out).sum())
        return out

    def gold(self, xs: Sequence[Any], ys: Sequence[str]) -> Tensor:
        _check_batch(xs, ys)
        vals = []
        for x, y in zip(xs, ys, strict=True):
            if self.gold_fn is not None:
                g = self.gold_fn(x, y)
                vals.append(math.nan if g is None else float(g))
            else:
                g = self.grades(x, y)[0]
                vals.append(math.nan if math.isnan(g) else float(g >= 2.0))
        return torch.tensor(vals, dtype=torch.float64)
