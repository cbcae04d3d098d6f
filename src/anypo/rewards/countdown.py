"""The ``countdown`` reward: does the model's expression reach the target with the given numbers?

The expression is never passed to ``eval``: it is parsed with :mod:`ast`, and only integer literals,
``+ - * /`` and parentheses are accepted. It is evaluated with exact fractions (``7 / 2 * 2`` is 7),
the literals must be a sub-multiset of the given numbers (each used at most once, or exactly once
with ``use_all``), and the value must equal the target.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from anypo.registry import REGISTRIES
from anypo.rewards.extract import find_answer, normalize_text
from anypo.types import PartConfig, RewardResult, Sample

__all__ = ["Countdown", "CountdownCheck", "check_countdown", "countdown", "evaluate_expression"]

MAX_EXPRESSION_CHARS = 200
# Checked before parsing: plain decimal literals only (no 0x10, 1_000, 1e3, names or calls).
_ALLOWED_CHARS = re.compile(r"[\d\s+\-*/()]*")
_OPS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__, ast.Div: Fraction.__truediv__}
# How models write operators and the answer's "= target" tail.
_SYMBOLS = {"\u00d7": "*", "\u22c5": "*", "\u00b7": "*", "\u00f7": "/", "\\times": "*", "\\cdot": "*", "\\div": "/"}


@dataclass(frozen=True)
class CountdownCheck:
    """The verdict on one expression.

    Attributes:
        ok: the expression is valid and reaches the target.
        reason: why it failed (empty when ``ok``).
        value: its exact value when it could be evaluated.
    """

    ok: bool
    reason: str = ""
    value: Fraction | None = None


def evaluate_expression(expression: str) -> tuple[Fraction, list[int]]:
    """Value and integer literals of an arithmetic expression, without ``eval``.

    Args:
        expression: e.g. ``"(25 - 5) * 3 / 4"``.

    Returns:
        ``(value, literals)``: the exact value and the integers used, in order of appearance.

    Raises:
        ValueError: on anything but non-negative integer literals, ``+ - * /`` and parentheses,
            on division by zero, and on expressions longer than ``MAX_EXPRESSION_CHARS``.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    if not _ALLOWED_CHARS.fullmatch(expression):
        bad = sorted(set(_ALLOWED_CHARS.sub("", expression)))
        raise ValueError(f"characters not allowed: {''.join(bad)!r}; only digits, + - * / and parentheses")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from None
    literals: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:  # bool is not a number here
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return _OPS[type(node.op)](left, right)
        what = type(node.op).__name__ if isinstance(node, (ast.BinOp, ast.UnaryOp)) else type(node).__name__
        raise ValueError(f"{what} is not allowed: only integers, + - * / and parentheses")

    return walk(tree.body), literals


def _expression_of(answer: str, target: int) -> str:
    """The expression of an answer: operators written as ``×``/``\\times``/``÷`` mapped to ``* /``,
    and an ``= target`` side (``(6 + 4) * 5 = 50`` or ``50 = (6 + 4) * 5``) dropped."""
    text = normalize_text(answer)
    for symbol, op in _SYMBOLS.items():
        text = text.replace(symbol, op)
    text = text.replace("$", "").replace("\\left", "").replace("\\right", "")
    sides = [side.strip() for side in text.split("=") if side.strip()]
    expressions = [side for side in sides if side != str(target)]
    return expressions[0] if expressions else text.strip()


def check_countdown(expression: str, numbers: list[int], target: int, use_all: bool = False) -> CountdownCheck:
    """Check a countdown answer.

    Args:
        expression: the model's answer, e.g. ``"(6 + 4) * 5"`` or ``"(6 + 4) × 5 = 50"``.
        numbers: the numbers given in the puzzle.
        target: the value to reach.
        use_all: require every number to be used exactly once (default: at most once).

    Returns:
        The verdict, with the reason of a failure.
    """
    try:
        value, used = evaluate_expression(_expression_of(expression, target))
    except ValueError as e:
        return CountdownCheck(False, str(e))
    except RecursionError:
        return CountdownCheck(False, "expression nested too deeply")
    extra = Counter(used) - Counter(numbers)
    if extra:
        return CountdownCheck(False, f"uses numbers not available: {sorted(extra.elements())}", value)
    if use_all and Counter(used) != Counter(numbers):
        return CountdownCheck(False, "does not use every number exactly once", value)
    if value != target:
        return CountdownCheck(False, f"evaluates to {value}, not {target}", value)
    return CountdownCheck(True, "", value)


@dataclass(frozen=True)
class Countdown(PartConfig):
    """Countdown correctness (as in TinyZero's countdown task): 1.0 when the answer expression uses
    the given numbers at most once each, only ``+ - * /`` and reaches the target, else 0.0.

    Reads ``sample.meta["numbers"]`` (list of int) and ``sample.meta["target"]`` (int); the reason
    of a failure is returned as feedback.
    """

    use_all: bool = False
    """Require every given number to be used exactly once."""


@REGISTRIES["reward"].register("countdown", config=Countdown)
def countdown(sample: Sample, cfg: Countdown) -> RewardResult:
    """1.0 when the final answer of ``sample.completion`` solves the countdown puzzle in meta."""
    if "numbers" not in sample.meta or "target" not in sample.meta:
        raise ValueError("countdown needs sample.meta['numbers'] and sample.meta['target'] (use the countdown task)")
    found = find_answer(sample.completion, fallback="none")
    if found is None:
        return RewardResult(0.0, feedback="no answer found: write the expression after 'Answer:'")
    check = check_countdown(found.text, list(sample.meta["numbers"]), int(sample.meta["target"]), cfg.use_all)
    return RewardResult(1.0 if check.ok else 0.0, feedback=check.reason or None)
