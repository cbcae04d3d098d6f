"""Reward parts, answer extraction, combination and error handling.

Expected values in the tables are written by hand.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from fractions import Fraction

import pytest

from anypo.registry import names, registry
from anypo.rewards import (
    Countdown,
    ExactMatch,
    Format,
    MathAnswer,
    Overlong,
    ReasoningGym,
    check_countdown,
    combine,
    countdown,
    evaluate_expression,
    exact_match,
    extract_answer,
    find_answer,
    format_reward,
    last_number,
    load_reward_fn,
    math_answer,
    overlong,
    parse_number,
    reasoning_gym_reward,
)
from anypo.types import PartConfig, RewardResult, Sample


def _s(completion: str, answer: str | None = None, **kw) -> Sample:
    return Sample(prompt="q", completion=completion, answer=answer, **kw)


# ----------------------------------------------------------------------------- extraction

EXTRACT_CASES = [
    # (response, extracted answer string)
    ("The sum is 68.", "68"),  # last-number fallback, trailing period
    ("Answer: -42", "-42"),
    ("Answer: \u2212 42", "-42"),  # unicode minus with a space
    ("\u221242", "-42"),
    ("I have 1,234 apples", "1234"),  # thousands comma
    ("First 3, then 5, so Answer: 12", "12"),  # the final answer, not the first number
    ("23 + 45 = 68", "68"),  # several numbers, no marker: the last one
    ("10 - 3 = 7", "7"),
    ("5 - 3", "3"),  # a binary minus is not a sign
    ("x = -3", "-3"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("so $\\frac{1}{2}$", "1/2"),  # LaTeX fraction through the last-number fallback
    ("\\boxed{\\frac{a}{\\sqrt{2}}} done", "\\frac{a}{\\sqrt{2}}"),  # nested braces
    ("Answer: $42$", "42"),
    ("**Answer:** 42", "42"),
    ("Answer: **42**.", "42"),
    ("The answer is 68.", "68"),
    ("final answer: 12.0", "12.0"),
    ("<answer>17</answer> and then 9", "17"),
    ("<answer> 17 ", "17"),  # unclosed tag (truncated response)
    ("Answer:\n\n77", "77"),  # answer on the next line
    ("Answer: 3\nWait, no. Answer: 4", "4"),  # the last marker wins
    ("Answer: \\boxed{5}", "5"),
    ("\\boxed{12", "12"),  # unclosed box is not a marker; fallback finds 12
    ("no digits here", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_kinds_and_no_fallback():
    assert find_answer("Answer: 5").kind == "answer"
    assert find_answer("\\boxed{5}").kind == "boxed"
    assert find_answer("<answer>5</answer>").kind == "tags"
    assert find_answer("it is 5").kind == "last_number"
    assert extract_answer("it is 5", fallback="none") is None
    assert last_number("between 3 and \u2212 1,000.") == "-1000"


NUMBER_CASES = [
    ("-42", Fraction(-42)),
    ("\u2212 42", Fraction(-42)),
    ("1,234", Fraction(1234)),
    ("1,234,567.5", Fraction(2469135, 2)),
    ("12.0", Fraction(12)),
    ("12", Fraction(12)),
    (".5", Fraction(1, 2)),
    ("42.", Fraction(42)),
    ("$42$", Fraction(42)),
    ("3/4", Fraction(3, 4)),
    ("\\frac{3}{4}", Fraction(3, 4)),
    ("-\\frac{3}{4}", Fraction(-3, 4)),
    ("\\dfrac{1}{2}", Fraction(1, 2)),
    ("1/0", None),
    ("1,2", None),  # not a thousands group
    ("12 apples", None),
    ("x", None),
]


@pytest.mark.parametrize(("text", "expected"), NUMBER_CASES)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


# ----------------------------------------------------------------------------- answer rewards

MATH_CASES = [
    # (completion, reference, score)
    ("Answer: 68", "68", 1.0),
    ("Answer: 67", "68", 0.0),
    ("Answer: 12.0", "12", 1.0),
    ("Answer: 12", "12.0", 1.0),
    ("Answer: 1,234", "1234", 1.0),
    ("Answer: \u2212 42", "-42", 1.0),
    ("Answer: 42", "-42", 0.0),
    ("Answer: \\frac{1}{2}", "0.5", 1.0),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("Answer: $\\frac{2}{4}$", "1/2", 1.0),
    ("Answer: 23 + 45 = 68", "68", 1.0),
    ("Answer: 68 apples.", "68", 1.0),
    ("Answer: 2^3", "8", 1.0),  # math-verify evaluates the expression
    ("\\boxed{x + 1}", "1 + x", 1.0),  # symbolic equality through math-verify
    ("First 68, then the real answer: 70", "70", 1.0),
    ("First 68, then the real answer: 70", "68", 0.0),
    ("23 + 45 = 68", "68", 1.0),  # fallback: last number
    ("nothing", "68", 0.0),
]


@pytest.mark.parametrize(("completion", "reference", "score"), MATH_CASES)
def test_math_answer(completion, reference, score):
    assert math_answer(_s(completion, reference), MathAnswer()) == score


def test_math_answer_number_only_does_not_evaluate_the_question():
    """On arithmetic tasks, restating the question is not an answer; stating the value is."""
    cfg = MathAnswer(number_only=True)
    assert math_answer(_s("Answer: 23 + 45", "68"), MathAnswer()) == 1.0  # math-verify evaluates it
    assert math_answer(_s("Answer: 23 + 45", "68"), cfg) == 0.0
    assert math_answer(_s("\\boxed{23+45}", "68"), cfg) == 0.0
    assert math_answer(_s("Answer: 23 + 45 = 68", "68"), cfg) == 1.0
    assert math_answer(_s("Answer: \u2212 1,234.0", "-1234"), cfg) == 1.0
    assert math_answer(_s("Answer: 2^3", "8"), cfg) == 0.0


def test_math_answer_without_fallback_needs_a_marker():
    assert math_answer(_s("so 68", "68"), MathAnswer(fallback="none")) == 0.0
    with pytest.raises(ValueError, match="sample.answer"):
        math_answer(_s("Answer: 1"), MathAnswer())


def test_exact_match():
    assert exact_match(_s("Answer: Paris.", "paris"), ExactMatch()) == 1.0
    assert exact_match(_s("Answer: Paris", "paris"), ExactMatch(case_sensitive=True)) == 0.0
    assert exact_match(_s("Answer: New   York", "New York"), ExactMatch()) == 1.0
    assert exact_match(_s("  yes \n", "Yes"), ExactMatch(extract=False)) == 1.0
    assert exact_match(_s("I think 12", "12"), ExactMatch()) == 0.0  # no marker, no fallback
    assert exact_match(_s("I think 12", "12"), ExactMatch(fallback="last_number")) == 1.0


@pytest.mark.parametrize(
    ("completion", "cfg", "score"),
    [
        ("Answer: 5", Format(), 1.0),
        ("so it is 5", Format(), 0.0),  # the last-number fallback is not the format
        ("Answer:", Format(), 0.0),  # empty answer
        ("\\boxed{5}", Format(marker="answer"), 0.0),
        ("Answer: \\boxed{5}", Format(marker="answer"), 1.0),
        ("<answer>5</answer>", Format(marker="tags"), 1.0),
        ("Answer: five", Format(numeric=True), 0.0),
        ("Answer: five", Format(), 1.0),
    ],
)
def test_format(completion, cfg, score):
    assert format_reward(_s(completion), cfg) == score


# ----------------------------------------------------------------------------- countdown


@pytest.mark.parametrize(
    ("expression", "ok", "reason"),
    [
        ("(6 + 4) * 5", True, ""),
        ("(6 + 4) \u00d7 5 = 50", True, ""),  # unicode times and the "= target" tail
        ("50 = (6+4)*5", True, ""),
        ("$(6 + 4) \\times 5$", True, ""),
        ("6 * 5 + 4 * 5", False, "not available"),  # 5 used twice
        ("5 * 10", False, "not available"),  # 10 is not given
        ("6 + 4", False, "evaluates to 10"),
        ("(6 - 1) * (4 / 4 + 9)", False, "not available"),
        ("100 / (4 - 4)", False, "division by zero"),
        ("2 ** 5", False, "Pow"),
        ("-6 + 56", False, "USub"),
        ("__import__('os').system('x')", False, "not allowed"),
        ("(lambda: 50)()", False, "not allowed"),
        ("0x32", False, "not allowed"),
        ("(6 + 4", False, "not an arithmetic expression"),
    ],
)
def test_check_countdown(expression, ok, reason):
    check = check_countdown(expression, [6, 4, 5, 1], 50)
    assert check.ok is ok
    assert reason in check.reason


def test_check_countdown_fractions_division_by_zero_and_use_all():
    assert check_countdown("7 / 2 * 2", [7, 2, 2], 7).ok  # exact fractions, no float error
    assert "division by zero" in check_countdown("6 / (4 - 4)", [6, 4, 4], 1).reason
    assert check_countdown("6 * 5 + 4", [6, 5, 4, 1], 34).ok
    assert not check_countdown("6 * 5 + 4", [6, 5, 4, 1], 34, use_all=True).ok
    assert check_countdown("6 * 5 + 4 * 1", [6, 5, 4, 1], 34, use_all=True).ok
    assert evaluate_expression("(1 + 2) * 3") == (Fraction(9), [1, 2, 3])
    with pytest.raises(ValueError, match="longer"):
        evaluate_expression("1+" * 200 + "1")


def test_countdown_reward():
    meta = {"numbers": [6, 4, 5], "target": 50}
    ok = countdown(_s("Think.\nAnswer: (6 + 4) * 5", meta=meta), Countdown())
    assert isinstance(ok, RewardResult) and ok.score == 1.0
    bad = countdown(_s("Answer: 6 * 5 + 4", meta=meta), Countdown())
    assert bad.score == 0.0 and "evaluates to 34" in bad.feedback
    assert countdown(_s("(6 + 4) * 5", meta=meta), Countdown()).score == 0.0  # no marker
    with pytest.raises(ValueError, match="meta"):
        countdown(_s("Answer: 1"), Countdown())


# ----------------------------------------------------------------------------- overlong shaping


@pytest.mark.parametrize(
    ("length", "expected"),
    [(15000, 0.0), (16384, 0.0), (17000, -0.150390625), (19000, -0.638671875), (20480, -1.0), (21000, -1.0)],
)
def test_overlong_dapo_example(length, expected):
    """DAPO (arXiv 2503.14476) with L_max = 20480, L_cache = 4096, so L_max - L_cache = 16384:
    R(17000) = (16384 - 17000) / 4096 = -616 / 4096 = -0.150390625,
    R(19000) = (16384 - 19000) / 4096 = -2616 / 4096 = -0.638671875, and -1 beyond L_max."""
    cfg = Overlong(max_tokens=20480, cache_tokens=4096)
    assert overlong(_s("x", num_tokens=length), cfg) == pytest.approx(expected, abs=1e-12)
    # same values when L_max comes from the sample's generation limit
    assert overlong(_s("x", num_tokens=length, max_tokens=20480), Overlong(cache_tokens=4096)) == pytest.approx(
        expected
    )


def test_overlong_default_cache_scales_with_limit():
    """cache_tokens=None -> L_cache = L_max // 5. L_max = 64: L_cache = 12, expected length 52;
    R(52) = 0, R(58) = (52 - 58) / 12 = -0.5, R(64) = -12 / 12 = -1."""
    cfg = Overlong(max_tokens=None, cache_tokens=None)
    got = [overlong(_s("x", num_tokens=n, max_tokens=64), cfg) for n in (52, 58, 64)]
    assert got == [0.0, -0.5, -1.0]


def test_overlong_rejects_bad_limits():
    with pytest.raises(ValueError, match="generation limit"):
        overlong(_s("x", num_tokens=5), Overlong(cache_tokens=2))
    with pytest.raises(ValueError, match="cache_tokens"):
        overlong(_s("x", num_tokens=5, max_tokens=256), Overlong())  # 4096 >= 256


# ----------------------------------------------------------------------------- reasoning gym


def test_reasoning_gym_reward_uses_generator_score():
    import reasoning_gym

    entry = reasoning_gym.create_dataset("basic_arithmetic", seed=3, size=1)[0]
    meta = {"rg_dataset": "basic_arithmetic", "rg_entry": entry, "rg_options": {}}
    assert reasoning_gym_reward(_s(f"Answer: {entry['answer']}", meta=meta), ReasoningGym()) == 1.0
    assert reasoning_gym_reward(_s("no idea", meta=meta), ReasoningGym()) == 0.0
    with pytest.raises(ValueError, match="rg_dataset"):
        reasoning_gym_reward(_s("Answer: 1"), ReasoningGym())


# ----------------------------------------------------------------------------- combination


def test_combine_weighted_sum_by_hand():
    """score = 1.0 * 1 (math_answer) + 0.1 * 1 (format) + 0.5 * 0.2 (user fn) - 1 * 0.25 (overlong)
    = 1 + 0.1 + 0.1 - 0.25 = 0.95, with L_max = 100, L_cache = 40: (60 - 70) / 40 = -0.25."""

    def brevity(sample: Sample) -> float:
        return 0.2

    runner = combine([(MathAnswer(), 1.0), (Format(), 0.1), (brevity, 0.5), Overlong(max_tokens=100, cache_tokens=40)])
    result = runner(_s("Answer: 68", "68", num_tokens=70))
    assert result.score == pytest.approx(0.95)
    assert result.components == {"math_answer": 1.0, "format": 1.0, "brevity": 0.2, "overlong": -0.25}
    assert runner.names == ["math_answer", "format", "brevity", "overlong"]


def test_combine_names_strings_and_duplicates():
    runner = combine(["math_answer", ("format", 0.5), (Format(marker="boxed"), 0.25)])
    result = runner(_s("Answer: 3", "3"))
    assert result.components == {"math_answer": 1.0, "format": 1.0, "format_2": 0.0}
    assert result.score == pytest.approx(1.5)
    with pytest.raises(KeyError, match="math_answer"):
        combine(["math_answer_typo"])
    with pytest.raises(ValueError):
        combine([])


def test_reward_result_components_and_feedback_are_kept():
    def judge(sample: Sample) -> RewardResult:
        return RewardResult(0.5, {"style": 1.0}, feedback="too long")

    result = combine([(judge, 2.0)])(_s("x"))
    assert result.score == 1.0
    assert result.components == {"judge": 0.5, "judge/style": 1.0}
    assert result.feedback == "too long"


def test_failing_rewards_score_zero_are_counted_and_logged_once(caplog):
    def boom(sample: Sample) -> float:
        raise RuntimeError("judge offline")

    def nan(sample: Sample) -> float:
        return math.nan

    def text(sample: Sample) -> str:
        return "1.0"

    runner = combine([(MathAnswer(), 1.0), boom, nan, (lambda s: math.inf, 3.0), text])
    with caplog.at_level(logging.WARNING, logger="anypo.rewards.combine"):
        batch = runner.score_batch([_s("Answer: 1", "1")] * 3)
    assert batch.scores == [1.0, 1.0, 1.0]
    assert batch.components["boom"] == [0.0, 0.0, 0.0] and batch.components["nan"] == [0.0] * 3
    assert batch.num_errors == 4 * 3
    assert runner.num_errors == 12
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4  # once per distinct error, not once per sample
    assert any("judge offline" in m for m in messages) and any("nan" in m for m in messages)
    last = runner.score_batch([_s("Answer: 2", "1"), _s("Answer: 1", "1")])
    assert last.num_errors == 8  # per batch
    assert runner.num_errors == 20
    metrics = last.metrics()
    assert metrics["reward/errors"] == 8.0
    assert metrics["reward/mean"] == 0.5 and metrics["reward/math_answer"] == 0.5 and metrics["reward/boom"] == 0.0


def test_part_that_raises_is_counted_not_raised():
    runner = combine([Countdown()])  # no numbers in meta: the part raises ValueError
    assert runner(_s("Answer: 1")).score == 0.0
    assert runner.num_errors == 1


def test_load_user_reward_from_module_and_file(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def short(sample):\n    return 1.0 if len(sample.completion) < 5 else 0.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward_fn("my_rewards:short")
    assert fn(_s("ok")) == 1.0
    file_fn = load_reward_fn(f"{tmp_path / 'my_rewards.py'}:short")
    assert file_fn(_s("far too long")) == 0.0
    runner = combine([(f"{tmp_path / 'my_rewards.py'}:short", 2.0)])
    assert runner(_s("ok")).components == {"short": 1.0} and runner(_s("ok")).score == 2.0
    with pytest.raises(AttributeError, match="nope"):
        load_reward_fn("my_rewards:nope")
    with pytest.raises(FileNotFoundError):
        load_reward_fn(f"{tmp_path / 'missing.py'}:short")
    with pytest.raises(ValueError, match="module:function"):
        load_reward_fn("my_rewards")


@pytest.mark.parametrize("name", names("reward"))
def test_reward_registry_contract(name):
    """Every registered reward: frozen PartConfig dataclass with a docstring, default-constructible,
    and on a sample with everything it needs returns a finite float or RewardResult."""
    fn, cfg_cls = registry("reward").get(name)
    assert issubclass(cfg_cls, PartConfig) and dataclasses.is_dataclass(cfg_cls)
    assert cfg_cls.__dataclass_params__.frozen and cfg_cls.__doc__
    cfg = cfg_cls()
    import reasoning_gym

    entry = reasoning_gym.create_dataset("basic_arithmetic", seed=0, size=1)[0]
    meta = {"numbers": [1, 2], "target": 3, "rg_dataset": "basic_arithmetic", "rg_entry": entry}
    sample = _s("Answer: 3", "3", num_tokens=10, max_tokens=8192, meta=meta)
    out = fn(sample, cfg)
    score = out.score if isinstance(out, RewardResult) else out
    assert isinstance(score, float) and math.isfinite(score)
