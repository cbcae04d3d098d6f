"""Arithmetic tasks: ``addition``, ``multiplication`` (k-digit operands) and ``arithmetic``
(expressions with ``+ - *`` and parentheses). Answers are computed with Python integers.

Every example carries a worked solution and a hint ladder (:mod:`anypo.tasks.solutions`): column
addition with carries, partial products, or one operation per step."""

from __future__ import annotations

import random

from anypo.tasks.base import Example, ProceduralTask
from anypo.tasks.solutions import binary_worked, expression_worked

__all__ = ["AdditionTask", "ArithmeticTask", "MultiplicationTask", "random_expression"]


def _operand_range(digits: int) -> tuple[int, int]:
    """Smallest and largest operand with ``digits`` digits (1-digit operands are 1-9)."""
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    return (1 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


class _BinaryTask(ProceduralTask):
    """``a <op> b`` with two ``digits``-digit operands."""

    symbol = "+"
    default_digits = 2

    def compute(self, a: int, b: int) -> int:
        raise NotImplementedError

    def generate(self, rng: random.Random) -> Example:
        lo, hi = _operand_range(self.digits)
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        question = f"What is {a} {self.symbol} {b}?"
        answer = str(self.compute(a, b))
        worked = binary_worked(a, self.symbol, b)
        key = f"{a}{self.symbol}{b}"
        return self.make_example(question, answer, key, {"operands": [a, b]}, worked.solution(answer), worked.hints())


class AdditionTask(_BinaryTask):
    """``What is a + b?`` with ``digits``-digit operands (default 2: 8100 distinct problems)."""

    symbol = "+"

    def compute(self, a: int, b: int) -> int:
        return a + b


class MultiplicationTask(_BinaryTask):
    """``What is a * b?`` with ``digits``-digit operands (default 2)."""

    symbol = "*"

    def compute(self, a: int, b: int) -> int:
        return a * b


_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_ATOM = 3


def random_expression(rng: random.Random, terms: int, lo: int, hi: int, ops: str = "+-*") -> tuple[str, int]:
    """A random expression over ``terms`` integers in ``[lo, hi]`` with the operators ``ops``.

    The tree shape and operators are random; parentheses are written only where they change the
    value, so two trees that read the same give the same string (the canonical key).

    Returns:
        ``(text, value)``, e.g. ``("(3 + 4) * 5", 35)``.
    """

    def build(n: int) -> tuple[str, int, int]:  # (text, value, precedence of the top operator)
        if n == 1:
            v = rng.randint(lo, hi)
            return str(v), v, _ATOM
        k = rng.randint(1, n - 1)
        (lt, lv, lp), (rt, rv, rp) = build(k), build(n - k)
        op = rng.choice(ops)
        prec = _PRECEDENCE[op]
        if lp < prec:
            lt = f"({lt})"
        # a - (b + c) and a * (b - c) need parentheses; a + (b - c) and a * (b * c) do not
        if rp < prec or (rp == prec and op == "-"):
            rt = f"({rt})"
        value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
        return f"{lt} {op} {rt}", value, prec

    if terms < 2:
        raise ValueError(f"an expression needs terms >= 2, got {terms}")
    if not ops or set(ops) - set(_PRECEDENCE):
        raise ValueError(f"ops must be a non-empty string of + - *, got {ops!r}")
    text, value, _ = build(terms)
    return text, value


class ArithmeticTask(ProceduralTask):
    """``Calculate <expression>.`` with ``terms`` operands of ``digits`` digits (defaults 3 and 1),
    operators ``+ - *`` and parentheses; answers may be negative."""

    ops = "+-*"
    """Operators drawn (the graded mix uses ``+`` and ``+-``)."""

    def generate(self, rng: random.Random) -> Example:
        text, value = random_expression(rng, self.terms, *_operand_range(self.digits), ops=self.ops)
        worked = expression_worked(text)
        meta = {"expression": text}
        return self.make_example(
            f"Calculate {text}.", str(value), text, meta, worked.solution(str(value)), worked.hints()
        )
