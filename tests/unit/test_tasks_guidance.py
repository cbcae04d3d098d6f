"""Worked solutions and hint ladders of the procedural tasks; the difficulty-graded mixes.

Expected texts are written out by hand from the column / partial-product / step methods described
in anypo.tasks.solutions; numeric checks use Python's own arithmetic as the independent oracle.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

import pytest

from anypo.rewards import check_countdown
from anypo.tasks import get_task
from anypo.tasks.solutions import (
    addition_worked,
    countdown_worked,
    expression_worked,
    multiplication_worked,
    subtraction_worked,
)

ADD_METHOD = (
    "Add column by column, starting from the ones digit; when a column adds up to 10 or more, "
    "write its last digit and carry 1 to the next column."
)
SUB_METHOD = (
    "Subtract column by column, starting from the ones digit; when the top digit is too small, "
    "add 10 to it and subtract 1 from the next column (borrow)."
)
BUILTIN = ["addition", "multiplication", "arithmetic", "countdown", "graded_arithmetic", "graded_countdown"]


def _fraction_eval(text: str) -> Fraction:
    """Independent evaluator: walks Python's parse tree with exact fractions (no task code)."""

    def walk(node):
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        left, right, op = walk(node.left), walk(node.right), type(node.op)
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        assert op is ast.Div
        return left / right

    return walk(ast.parse(text, mode="eval").body)


class _Drawn:
    """Stands in for the generator's random stream: ``randint`` returns the given values in order."""

    def __init__(self, *values: int):
        self.values = iter(values)

    def randint(self, lo: int, hi: int) -> int:
        v = next(self.values)
        assert lo <= v <= hi
        return v


def test_hint_ladder_of_47_plus_85_by_hand():
    """47 + 85 column by column: ones 7 + 5 = 12 (write 2, carry 1); tens 4 + 8 + 1 = 13 (write 3,
    carry 1); the carry 1 becomes the hundreds digit: 132. Ladder: the method, which columns carry
    (ones, tens), then the first step, then the first two steps (all but the last)."""
    ex = get_task("addition").generate(_Drawn(47, 85))
    ones = "Ones: 7 + 5 = 12, write 2, carry 1."
    tens = "Tens: 4 + 8 + 1 = 13, write 3, carry 1."
    assert ex.hints == (ADD_METHOD, "Columns that carry 1: ones, tens.", ones, f"{ones}\n{tens}")
    assert ex.solution == f"{ones}\n{tens}\nHundreds: write the carry 1.\nSo 47 + 85 = 132.\nAnswer: 132"
    assert ex.answer == "132" and ex.prompt.startswith("What is 47 + 85?")
    mul = get_task("multiplication").generate(_Drawn(34, 12))
    assert mul.solution == "34 * 10 = 340.\n34 * 2 = 68.\n340 + 68 = 408.\nSo 34 * 12 = 408.\nAnswer: 408"


def test_addition_without_carries():
    """23 + 45: 3 + 5 = 8, 2 + 4 = 6, no carry; the ladder's last rung is the ones column only."""
    w = addition_worked(23, 45)
    assert w.steps == ("Ones: 3 + 5 = 8, write 8.", "Tens: 2 + 4 = 6, write 6.")
    assert w.hints() == (ADD_METHOD, "No column carries.", "Ones: 3 + 5 = 8, write 8.")
    assert w.conclusion == "So 23 + 45 = 68."


def test_addition_of_different_lengths():
    """995 + 7: ones 5 + 7 = 12 (carry 1); tens 9 + 1 = 10 (carry 1); hundreds 9 + 1 = 10 (carry
    1); thousands: the carry. 1002."""
    w = addition_worked(995, 7)
    assert w.steps == (
        "Ones: 5 + 7 = 12, write 2, carry 1.",
        "Tens: 9 + 1 = 10, write 0, carry 1.",
        "Hundreds: 9 + 1 = 10, write 0, carry 1.",
        "Thousands: write the carry 1.",
    )
    assert w.hints()[1] == "Columns that carry 1: ones, tens, hundreds."
    w = addition_worked(305, 4)  # hundreds 3 alone, no carry into it
    assert w.steps == ("Ones: 5 + 4 = 9, write 9.", "Tens: write 0.", "Hundreds: write 3.")


def test_subtraction_with_borrows_by_hand():
    """52 - 27: ones 2 < 7, so 2 + 10 - 7 = 5 and borrow; tens 5 - 1 - 2 = 2: 25.
    503 - 498: ones 3 + 10 - 8 = 5 (borrow); tens 0 - 1 + 10 - 9 = 0 (borrow); hundreds
    5 - 1 - 4 = 0: 5. 27 - 52 is -(52 - 27) = -25."""
    w = subtraction_worked(52, 27)
    assert w.steps == ("Ones: 2 + 10 - 7 = 5, borrow 1.", "Tens: 5 - 1 - 2 = 2.")
    assert w.hints() == (SUB_METHOD, "Columns that borrow: ones.", "Ones: 2 + 10 - 7 = 5, borrow 1.")
    assert w.conclusion == "So 52 - 27 = 25."
    w = subtraction_worked(503, 498)
    assert w.steps == (
        "Ones: 3 + 10 - 8 = 5, borrow 1.",
        "Tens: 0 - 1 + 10 - 9 = 0, borrow 1.",
        "Hundreds: 5 - 1 - 4 = 0.",
    )
    assert w.conclusion == "So 503 - 498 = 5."
    w = subtraction_worked(27, 52)
    assert w.steps[0] == "27 is smaller than 52, so 27 - 52 = -(52 - 27)."
    assert w.steps[1:] == ("Ones: 2 + 10 - 7 = 5, borrow 1.", "Tens: 5 - 1 - 2 = 2.")
    assert w.method[0] == f"27 is smaller than 52, so compute 52 - 27 and put a minus sign in front. {SUB_METHOD}"
    assert w.conclusion == "So 27 - 52 = -25."
    assert subtraction_worked(657, 323).hints()[1] == "No column borrows."


def test_multiplication_by_partial_products_by_hand():
    """34 * 12 = 34 * 10 + 34 * 2 = 340 + 68 = 408. 34 * 7: 7 has one digit, so 34 is split:
    30 * 7 + 4 * 7 = 210 + 28 = 238. 7 * 8 (one digit each) is one step."""
    w = multiplication_worked(34, 12)
    assert w.steps == ("34 * 10 = 340.", "34 * 2 = 68.", "340 + 68 = 408.")
    assert w.hints() == (
        "Split 12 into 10 + 2, multiply 34 by each part, then add the products.",
        "34 * 10 = 340.",
        "34 * 10 = 340.\n34 * 2 = 68.",
    )
    w = multiplication_worked(34, 7)
    assert w.steps == ("30 * 7 = 210.", "4 * 7 = 28.", "210 + 28 = 238.")
    assert w.method == ("Split 34 into 30 + 4, multiply 7 by each part, then add the products.",)
    w = multiplication_worked(7, 8)
    assert w.steps == ("7 * 8 = 56.",) and len(w.hints()) == 2 and w.hints()[1] == "7 * 8 = 56."


def test_expression_steps_by_hand():
    """(9 - 6) * 4: 9 - 6 = 3, then 3 * 4 = 12. 12 + 34 - 5: 12 + 34 (both two digits: worked in
    columns, 2 + 4 = 6, 1 + 3 = 4) = 46, then 46 - 5 = 41 in one line. (7 + 6) * (4 - 6): a
    negative right operand is written in parentheses: 13 * (-2) = -26."""
    w = expression_worked("(9 - 6) * 4")
    assert w.steps == ("9 - 6 = 3.", "3 * 4 = 12.")
    assert w.hints() == (
        "Work out one operation at a time, left to right; parentheses first; multiply before adding or subtracting.",
        "9 - 6 = 3.",
    )
    assert w.solution("12") == "9 - 6 = 3.\n3 * 4 = 12.\nSo (9 - 6) * 4 = 12.\nAnswer: 12"
    w = expression_worked("12 + 34 - 5")
    assert w.steps == (
        "Step 1: 12 + 34.",
        "Ones: 2 + 4 = 6, write 6.",
        "Tens: 1 + 3 = 4, write 4.",
        "12 + 34 = 46.",
        "46 - 5 = 41.",
    )
    assert w.method == (
        "Work out one operation at a time, left to right; add and subtract column by column from the "
        "ones digit, carrying and borrowing.",
    )
    assert expression_worked("(7 + 6) * (4 - 6)").steps == ("7 + 6 = 13.", "4 - 6 = -2.", "13 * (-2) = -26.")
    assert expression_worked("47 + 85").steps == addition_worked(47, 85).steps  # one operation: columns


def test_countdown_steps_by_hand_and_wrong_target():
    """2 * (2 + 4): the parentheses first, 2 + 4 = 6, then 2 * 6 = 12. (8 / 2) + 1: 8 / 2 = 4."""
    w = countdown_worked("2 * (2 + 4)", 12)
    assert w.solution("2 * (2 + 4)") == "2 + 4 = 6.\n2 * 6 = 12.\nSo 2 * (2 + 4) = 12.\nAnswer: 2 * (2 + 4)"
    assert w.hints() == (
        "Combine two numbers at a time with + - * / (each result a whole number), using each number at "
        "most once, until you reach 12.",
        "2 + 4 = 6.",
    )
    assert countdown_worked("(8 / 2) + 1", 5).steps == ("8 / 2 = 4.", "4 + 1 = 5.")
    with pytest.raises(ValueError, match="not the target 13"):
        countdown_worked("2 * (2 + 4)", 13)
    with pytest.raises(ValueError, match="whole number"):
        countdown_worked("(7 / 2) * 2", 7)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_example_has_a_solution_the_default_reward_accepts(name):
    """The solution is a full reply: the task's default reward gives it full marks (correctness 1 and
    the format bonus), and its last line is ``Answer: <answer>``."""
    task = get_task(name, num_heldout=40)
    runner = task.reward()
    for ex in task.train_examples(40) + task.heldout_examples():
        assert ex.solution is not None and ex.solution.endswith(f"\nAnswer: {ex.answer}")
        result = runner(ex.to_sample(ex.solution))
        assert all(v == 1.0 for v in result.components.values()), (ex.prompt, result)
        assert ex.solution not in ex.prompt and not any(h in ex.prompt for h in ex.hints)


@pytest.mark.parametrize("name", BUILTIN)
def test_hint_ladders_grow_towards_the_solution(name):
    """Weakest first: method hints (no worked value, no '='), then the solution's first 1, 2, ...
    step lines up to all steps but the last (at least one), so the last rung leaves one step, the
    conclusion and the answer line to the model."""
    for ex in get_task(name, num_heldout=20).train_examples(60):
        steps = ex.solution.split("\n")[:-2]  # drop the conclusion and the answer line
        n = max(1, len(steps) - 1)
        assert ex.hints[-n:] == tuple("\n".join(steps[:i]) for i in range(1, n + 1))
        method = ex.hints[:-n]
        assert method and all("=" not in h for h in method)


@pytest.mark.parametrize(("digits", "terms"), [(1, 3), (2, 4), (2, 6)])
def test_countdown_solution_steps_evaluate_to_the_target(digits, terms):
    """Every step ``a op b = c.`` is right (exact fractions), every intermediate is a whole number,
    the solution expression evaluates to the target and uses each given number exactly once."""
    for ex in get_task("countdown", digits=digits, terms=terms).train_examples(100):
        numbers, target = ex.meta["numbers"], ex.meta["target"]
        lines = ex.solution.split("\n")
        for line in lines[:-2]:
            a, op, b, c = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)\.", line).groups()
            assert _fraction_eval(f"{a} {op} {b}") == int(c)
        assert int(lines[-3].split("= ")[1][:-1]) == target
        assert len(lines) - 2 == terms - 1  # one operation per number joined in
        assert _fraction_eval(ex.answer) == target
        assert check_countdown(ex.answer, numbers, target, use_all=True).ok


def test_arithmetic_solution_steps_are_right():
    """Every one-line step ``a op b = c.`` of random arithmetic expressions is right, and the last
    step's value is the answer."""
    for ex in get_task("arithmetic", terms=4, digits=2).train_examples(100):
        lines = ex.solution.split("\n")[:-2]
        results = [ln for ln in lines if re.fullmatch(r"-?\d+ [-+*] \(?-?\d+\)? = -?\d+\.", ln)]
        for line in results:
            left, right = line[:-1].split(" = ")
            assert _fraction_eval(left) == int(right), line
        assert results[-1].endswith(f"= {ex.answer}.")


def test_existing_streams_are_unchanged():
    """The first problems of the default streams, recorded from commit 14ec301 (before solutions
    were added): prompts, answers and keys stay the same."""
    add = get_task("addition").train_examples(3)
    assert [e.meta["operands"] for e in add] == [[78, 36], [83, 38], [59, 73]]
    assert [e.answer for e in add] == ["114", "121", "132"]
    cd = get_task("countdown").train_examples(3)
    assert [(e.meta["numbers"], e.meta["target"], e.answer) for e in cd] == [
        ([4, 2, 2], 12, "2 * (2 + 4)"),
        ([1, 2, 7], 6, "(1 + 7) - 2"),
        ([5, 5, 1], 25, "(5 * 5) / 1"),
    ]
    assert [e.meta["expression"] for e in get_task("arithmetic").train_examples(3)] == [
        "(9 - 6) * 4",
        "8 - 8 * 5",
        "8 + 4 * 3",
    ]


# ---- the graded mixes ----

ARITH_LEVELS = {0: (2, 2, "+"), 1: (3, 2, "+-"), 2: (4, 3, "+-"), 3: (5, 3, "+-")}
COUNTDOWN_LEVELS = {0: (1, 3), 1: (1, 4), 2: (2, 5), 3: (2, 6)}


def test_graded_arithmetic_levels_follow_the_table():
    """Level i of example j is j mod 4; operands have the level's digits and count, operators are
    from the level's set, and the answer is Python's value of the expression."""
    task = get_task("graded_arithmetic", num_heldout=40)
    for split in (task.train_examples(200), task.heldout_examples()):
        for j, ex in enumerate(split):
            level = ex.meta["difficulty"]
            assert level == j % 4 and ex.meta["task"] == "graded_arithmetic"
            digits, terms, ops = ARITH_LEVELS[level]
            expr = ex.meta["expression"]
            numbers = re.findall(r"\d+", expr)
            assert len(numbers) == terms and all(len(n) == digits for n in numbers)
            assert set(re.findall(r"[-+*]", expr)) <= set(ops)
            assert int(ex.answer) == _fraction_eval(expr)
            assert ex.prompt.startswith(f"Calculate {expr}.")


def test_graded_countdown_levels_follow_the_table():
    task = get_task("graded_countdown", num_heldout=20)
    for j, ex in enumerate(task.train_examples(80) + task.heldout_examples()):
        level = ex.meta["difficulty"]
        assert level == j % 4 if j < 80 else level == (j - 80) % 4
        digits, terms = COUNTDOWN_LEVELS[level]
        numbers, target = ex.meta["numbers"], ex.meta["target"]
        assert len(numbers) == terms and all(1 <= n < 10**digits for n in numbers)
        assert 1 <= target <= 10 ** (digits + 1)
        assert check_countdown(ex.answer, numbers, target, use_all=True).ok


@pytest.mark.parametrize("name", ["graded_arithmetic", "graded_countdown"])
def test_graded_splits_balanced_disjoint_and_fixed(name):
    """200 held-out problems = 50 per level, distinct; training never yields one; the held-out set
    does not depend on the training seed; prefixes of a split are the smaller splits."""
    task = get_task(name)
    heldout = task.heldout_examples()
    assert Counter(e.meta["difficulty"] for e in heldout) == {0: 50, 1: 50, 2: 50, 3: 50}
    keys = {e.canonical_key for e in heldout}
    assert len(keys) == 200
    train = task.train_examples(2000)
    assert not {e.canonical_key for e in train} & keys
    assert get_task(name, seed=5).heldout_examples() == heldout
    assert [e.canonical_key for e in get_task(name, seed=5).train_examples(50)] != [e.canonical_key for e in train[:50]]
    assert task.train_examples(37) == train[:37]
    assert task.heldout_examples(10) == heldout[:10]


def test_graded_level_subset_and_errors():
    """options levels picks levels and keeps their original indices; 7 held-out over levels 1 and 3
    is 4 + 3."""
    task = get_task("graded_arithmetic", options={"levels": "3,1"}, num_heldout=7)
    assert task.describe_levels() == {1: "2 operands of 3 digits, + -", 3: "3 operands of 5 digits, + -"}
    assert [e.meta["difficulty"] for e in task.heldout_examples()] == [1, 3, 1, 3, 1, 3, 1]
    hard = get_task("graded_countdown", options={"levels": 3}).train_examples(5)
    assert {e.meta["difficulty"] for e in hard} == {3} and all(len(e.meta["numbers"]) == 6 for e in hard)
    for bad in ("4", "1,1", "x", ""):
        with pytest.raises(ValueError, match="levels="):
            get_task("graded_arithmetic", options={"levels": bad})
    with pytest.raises(ValueError, match="unknown options"):
        get_task("graded_arithmetic", options={"level": 1})
    with pytest.raises(ValueError, match="digits/terms are set by its levels"):
        get_task("graded_countdown", digits=2)


def test_graded_default_rewards_and_instructions():
    arith, cd = get_task("graded_arithmetic"), get_task("graded_countdown")
    assert [type(p).__name__ for p, _ in arith.default_reward()] == ["MathAnswer", "Format"]
    assert [type(p).__name__ for p, _ in cd.default_reward()] == ["Countdown", "Format"]
    assert cd.heldout_examples(1)[0].prompt.endswith("Put the final expression after 'Answer:'.")
    assert arith.heldout_examples(1)[0].prompt.endswith("Put the final answer after 'Answer:'.")
