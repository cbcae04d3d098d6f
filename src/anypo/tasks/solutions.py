"""Worked reference solutions and hint ladders of the procedural tasks.

Guidance methods (Scaf-GRPO's tiered in-prompt hints, arXiv 2510.19807; GHPO's partial-solution
prefixes, arXiv 2507.10628; roll-ins from reference responses, DR-PO arXiv 2404.08495) need, per
prompt, a reference solution and hints "from abstract concepts to concrete steps". The generators
know how each problem is solved, so they write both:

- a :class:`Worked` solution is ``method`` hints (what to do, no computed value), ``steps`` (one
  line per step, each with its computed value) and a ``conclusion`` line;
- ``Worked.solution(answer)`` is the steps, the conclusion and ``Answer: <answer>`` (a reply the
  task's default reward scores as fully correct);
- ``Worked.hints()`` is the ladder, weakest first: the method hints, then the first 1, 2, ...
  steps, up to all steps but the last (at least one step). The last hint is nearly the solution:
  only the last step, the conclusion and the answer line are missing. Each hint stands alone (a
  step hint repeats the earlier steps), so a method can insert exactly one of them.

Methods used (all exact integer arithmetic, computed here, not parsed from text):

- addition ``a + b``: column by column from the ones, with the carry of each column;
- subtraction ``a - b``: column by column with borrows (``b - a`` negated when ``a < b``);
- multiplication ``a * b``: split one factor into its place values (``12 = 10 + 2``), one partial
  product per part, then their sum;
- an expression of several operations (``arithmetic``): one operation per step in evaluation
  order (parentheses, then ``*``, then ``+`` ``-``, left to right), additions and subtractions of
  numbers of two or more digits worked column by column under a ``Step k:`` line;
- a countdown solution: one line per operation in evaluation order.

Nothing here draws random numbers, so adding solutions leaves every seeded stream unchanged.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "Worked",
    "addition_worked",
    "binary_worked",
    "column_name",
    "countdown_worked",
    "expression_worked",
    "multiplication_worked",
    "subtraction_worked",
]

_COLUMNS = (
    "ones",
    "tens",
    "hundreds",
    "thousands",
    "ten thousands",
    "hundred thousands",
    "millions",
    "ten millions",
    "hundred millions",
)


def column_name(i: int) -> str:
    """Name of the ``i``-th decimal column from the right: 0 ``ones``, 1 ``tens``, ... (``10^i`` past 10^8)."""
    return _COLUMNS[i] if i < len(_COLUMNS) else f"10^{i}"


def _digits(x: int) -> list[int]:
    """Decimal digits of ``x >= 0``, ones first."""
    return [int(c) for c in reversed(str(x))]


@dataclass(frozen=True)
class Worked:
    """A worked solution.

    Attributes:
        method: hints that name the method (and, for columns, which ones carry), no values worked out.
        steps: one line per step, in order.
        conclusion: the line after the steps (``So 47 + 85 = 132.``).
    """

    method: tuple[str, ...]
    steps: tuple[str, ...]
    conclusion: str

    def solution(self, answer: str) -> str:
        """The full reply: steps, conclusion, ``Answer: <answer>``."""
        return "\n".join([*self.steps, self.conclusion, f"Answer: {answer}"])

    def hints(self) -> tuple[str, ...]:
        """The ladder, weakest first: method hints, then the first 1 .. max(1, len(steps) - 1) steps."""
        last = max(1, len(self.steps) - 1)
        return (*self.method, *("\n".join(self.steps[:i]) for i in range(1, last + 1)))


def _column_addition(a: int, b: int) -> tuple[list[str], list[str]]:
    """Column lines of ``a + b`` (``a, b >= 0``) and the names of the columns that carry."""
    da, db = _digits(a), _digits(b)
    lines, carried, carry = [], [], 0
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([carry] if carry else [])
        total = sum(terms)
        name = column_name(i).capitalize()
        if len(terms) == 1:
            lines.append(f"{name}: write {total}.")
        else:
            out = f", carry {total // 10}." if total >= 10 else "."
            lines.append(f"{name}: {' + '.join(map(str, terms))} = {total}, write {total % 10}{out}")
        if total >= 10:
            carried.append(column_name(i))
        carry = total // 10
    if carry:
        lines.append(f"{column_name(max(len(da), len(db))).capitalize()}: write the carry {carry}.")
    return lines, carried


def addition_worked(a: int, b: int) -> Worked:
    """``a + b`` (``a, b >= 0``) column by column, with carries.

    ``addition_worked(47, 85)``: steps ``Ones: 7 + 5 = 12, write 2, carry 1.``, ``Tens: 4 + 8 + 1 =
    13, write 3, carry 1.``, ``Hundreds: write the carry 1.``; conclusion ``So 47 + 85 = 132.``
    """
    if a < 0 or b < 0:
        raise ValueError(f"column addition needs non-negative operands, got {a} and {b}")
    lines, carried = _column_addition(a, b)
    method = (
        "Add column by column, starting from the ones digit; when a column adds up to 10 or more, "
        "write its last digit and carry 1 to the next column."
    )
    carries = f"Columns that carry 1: {', '.join(carried)}." if carried else "No column carries."
    return Worked((method, carries), tuple(lines), f"So {a} + {b} = {a + b}.")


def subtraction_worked(a: int, b: int) -> Worked:
    """``a - b`` (``a, b >= 0``) column by column, with borrows; ``-(b - a)`` when ``a < b``.

    A column that borrows adds 10 to its top digit and the next column subtracts the 1:
    ``subtraction_worked(52, 27)``: ``Ones: 2 + 10 - 7 = 5, borrow 1.``, ``Tens: 5 - 1 - 2 = 2.``
    """
    if a < 0 or b < 0:
        raise ValueError(f"column subtraction needs non-negative operands, got {a} and {b}")
    top, bottom = (a, b) if a >= b else (b, a)
    dt, db = _digits(top), _digits(bottom)
    lines, borrowed, borrow = [], [], 0
    for i, d in enumerate(dt):
        sub = db[i] if i < len(db) else None
        need = d - borrow < (sub or 0)
        if not borrow and sub is None:
            lines.append(f"{column_name(i).capitalize()}: write {d}.")
        else:
            value = d - borrow + 10 * need - (sub or 0)
            text = (
                f"{d}"
                + (" - 1" if borrow else "")
                + (" + 10" if need else "")
                + (f" - {sub}" if sub is not None else "")
            )
            lines.append(f"{column_name(i).capitalize()}: {text} = {value}" + (", borrow 1." if need else "."))
        if need:
            borrowed.append(column_name(i))
        borrow = int(need)
    method = (
        "Subtract column by column, starting from the ones digit; when the top digit is too small, "
        "add 10 to it and subtract 1 from the next column (borrow)."
    )
    borrows = f"Columns that borrow: {', '.join(borrowed)}." if borrowed else "No column borrows."
    if a < b:
        method = f"{a} is smaller than {b}, so compute {b} - {a} and put a minus sign in front. {method}"
        lines.insert(0, f"{a} is smaller than {b}, so {a} - {b} = -({b} - {a}).")
    return Worked((method, borrows), tuple(lines), f"So {a} - {b} = {a - b}.")


def _place_parts(x: int) -> list[int]:
    """Non-zero place values of ``x >= 0``, largest first: 1203 -> [1000, 200, 3]."""
    return [d * 10**i for i, d in reversed(list(enumerate(_digits(x)))) if d]


def multiplication_worked(a: int, b: int) -> Worked:
    """``a * b`` (``a, b >= 0``) by partial products.

    The second factor is split into its place values (the first when the second has one non-zero
    digit): ``multiplication_worked(34, 12)``: ``34 * 10 = 340.``, ``34 * 2 = 68.``,
    ``340 + 68 = 408.``
    """
    if a < 0 or b < 0:
        raise ValueError(f"partial products need non-negative factors, got {a} and {b}")
    fixed, split, swap = a, b, False
    if len(_place_parts(b)) < 2 and len(_place_parts(a)) >= 2:
        fixed, split, swap = b, a, True
    parts = _place_parts(split)
    if len(parts) < 2:
        step = f"{a} * {b} = {a * b}."
        return Worked(("Use the multiplication table, then append the zeros.",), (step,), f"So {a} * {b} = {a * b}.")
    lines = [(f"{p} * {fixed}" if swap else f"{fixed} * {p}") + f" = {p * fixed}." for p in parts]
    lines.append(f"{' + '.join(str(p * fixed) for p in parts)} = {a * b}.")
    method = f"Split {split} into {' + '.join(map(str, parts))}, multiply {fixed} by each part, then add the products."
    return Worked((method,), tuple(lines), f"So {a} * {b} = {a * b}.")


def binary_worked(a: int, op: str, b: int) -> Worked:
    """The column / partial-product method of ``a op b`` for ``op`` in ``+ - *``."""
    if op == "+":
        return addition_worked(a, b)
    if op == "-":
        return subtraction_worked(a, b)
    if op == "*":
        return multiplication_worked(a, b)
    raise ValueError(f"no worked method for operator {op!r}; use + - *")


_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _expression_ops(text: str) -> tuple[list[tuple[Fraction, str, Fraction, Fraction]], Fraction, ast.expr]:
    """``(left, op, right, value)`` of each operation of ``text`` in evaluation order, the value,
    and the parsed tree."""
    tree = ast.parse(text, mode="eval").body
    ops: list[tuple[Fraction, str, Fraction, Fraction]] = []

    def walk(node: ast.expr) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            op = _OPS[type(node.op)]
            if op == "/" and right == 0:
                raise ValueError(f"division by zero in {text!r}")
            value = _APPLY[op](left, right)
            ops.append((left, op, right, value))
            return value
        raise ValueError(f"not an expression of integers and + - * /: {text!r}")

    value = walk(tree)
    return ops, value, tree


def _op_line(left: Fraction, op: str, right: Fraction, value: Fraction) -> str:
    r = f"({_fmt(right)})" if right < 0 else _fmt(right)
    return f"{_fmt(left)} {op} {r} = {_fmt(value)}."


def expression_worked(text: str) -> Worked:
    """One operation at a time of an integer expression with ``+ - *`` and parentheses.

    An addition or subtraction of two numbers that both have two or more digits is worked column by
    column under a ``Step k: a op b.`` line and closed by ``a op b = c.``; other operations take one
    line. A single operation of two non-negative integers (``47 + 85``) is :func:`binary_worked`.
    """
    ops, value, tree = _expression_ops(text)
    if (
        isinstance(tree, ast.BinOp)
        and all(isinstance(n, ast.Constant) for n in (tree.left, tree.right))
        and type(tree.op) in (ast.Add, ast.Sub, ast.Mult)
    ):
        return binary_worked(tree.left.value, _OPS[type(tree.op)], tree.right.value)
    lines: list[str] = []
    columns = False
    for k, (left, op, right, v) in enumerate(ops, start=1):
        if op in "+-" and min(left, right) >= 10 and left.denominator == right.denominator == 1:
            columns = True
            worked = binary_worked(int(left), op, int(right))
            lines += [f"Step {k}: {_fmt(left)} {op} {_fmt(right)}.", *worked.steps]
        lines.append(_op_line(left, op, right, v))
    method = "Work out one operation at a time, left to right"
    if "(" in text:
        method += "; parentheses first"
    if "*" in text and ("+" in text or "-" in text):
        method += "; multiply before adding or subtracting"
    if columns:
        method += "; add and subtract column by column from the ones digit, carrying and borrowing"
    return Worked((method + ".",), tuple(lines), f"So {text} = {_fmt(value)}.")


def countdown_worked(expression: str, target: int) -> Worked:
    """The steps of a countdown solution ``expression`` (which must equal ``target``).

    ``countdown_worked("2 * (2 + 4)", 12)``: steps ``2 + 4 = 6.``, ``2 * 6 = 12.``

    Raises:
        ValueError: the expression does not evaluate to ``target`` or a step is not a whole number
            (countdown puzzles are built from exact integer steps).
    """
    ops, value, _ = _expression_ops(expression)
    if value != target:
        raise ValueError(f"countdown solution {expression!r} equals {_fmt(value)}, not the target {target}")
    if any(v.denominator != 1 or v < 0 for *_, v in ops):
        raise ValueError(f"countdown solution {expression!r} has a step that is not a whole number >= 0")
    steps = [_op_line(*o) for o in ops]
    method = (
        f"Combine two numbers at a time with + - * / (each result a whole number), "
        f"using each number at most once, until you reach {target}."
    )
    return Worked((method,), tuple(steps), f"So {expression} = {target}.")
