"""Answer rewards: ``math_answer`` (correctness), ``exact_match`` and ``format``.

Each reads the final answer of ``sample.completion`` with :mod:`anypo.rewards.extract` and compares it
with ``sample.answer``.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

from anypo.registry import REGISTRIES
from anypo.rewards.extract import answer_number, extract_answer, find_markers, parse_number
from anypo.types import PartConfig, Sample

__all__ = ["ExactMatch", "Format", "MathAnswer", "answers_match", "exact_match", "format_reward", "math_answer"]

REWARDS = REGISTRIES["reward"]


@dataclass(frozen=True)
class MathAnswer(PartConfig):
    """Correctness of the final answer: 1.0 when it equals ``sample.answer``, else 0.0.

    The answer is extracted (``\\boxed{}``, ``<answer>``, ``Answer:``, then the last number) and
    compared first as exact numbers (``1,234`` = ``1234``, ``12.0`` = ``12``, ``\\frac{1}{2}`` =
    ``0.5``), then with math-verify (https://github.com/huggingface/Math-Verify), which handles
    expressions, sets and intervals. Either match scores 1.0.
    """

    fallback: Literal["last_number", "none"] = "last_number"
    """Without an answer marker: ``last_number`` grades the last number of the response, ``none``
    scores 0."""
    number_only: bool = False
    """Grade only the number the answer states (``68``, ``23 + 45 = 68``, ``1/2``), never evaluate
    an expression: on arithmetic tasks ``Answer: 23 + 45`` merely restates the question, and
    math-verify would evaluate it to the right value."""
    timeout_seconds: int = 5
    """math-verify's time limit per parse and comparison (only enforced in the main thread, where
    its ``signal.alarm`` works)."""


@dataclass(frozen=True)
class ExactMatch(PartConfig):
    """1.0 when the extracted answer equals ``sample.answer`` as a string, else 0.0.

    Both sides are normalised: surrounding whitespace and a trailing period removed, inner runs of
    whitespace collapsed to one space, and (unless ``case_sensitive``) compared case-folded.
    """

    case_sensitive: bool = False
    """Compare letter case too."""
    extract: bool = True
    """Extract the final answer first; False compares the whole response."""
    fallback: Literal["last_number", "none"] = "none"
    """Without an answer marker: ``last_number`` uses the last number, ``none`` scores 0."""


@dataclass(frozen=True)
class Format(PartConfig):
    """Reward for stating the final answer in a parseable form: 1.0 if present, else 0.0.

    ``marker="any"`` accepts any explicit marker (``Answer:``, ``\\boxed{}``, ``<answer>``); the
    last-number fallback never counts as following the format.
    """

    marker: Literal["any", "answer", "boxed", "tags"] = "any"
    """Which marker the response must use for its final answer."""
    numeric: bool = False
    """Also require the answer to state a number."""


def _math_verify_equal(gold: str, pred: str, timeout_seconds: int) -> bool:
    """True when math-verify finds ``pred`` equal to ``gold`` (False on any parse failure).

    The answer string is parsed both as LaTeX math (``$...$``, which reads ``x + 1`` whole) and as
    plain text (which finds ``68`` in ``68 apples``); either reading may match.
    """
    from math_verify import parse, verify  # imported lazily: it pulls in sympy

    # signal.alarm (math-verify's timeout) only works in the main thread
    timeout = timeout_seconds if threading.current_thread() is threading.main_thread() else None
    gold_parsed = list(_parse_gold(gold, timeout))
    if not gold_parsed:
        return False
    for text in (f"${pred}$", pred):
        pred_parsed = parse(text, parsing_timeout=timeout)
        if pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> tuple[Any, ...]:
    """math-verify's parse of a reference answer; cached since every sample of a group shares it.

    A reference that is not a plain number is read as LaTeX math first, so ``1 + x`` is the
    expression, not the number 1.
    """
    from math_verify import parse

    texts = (gold, f"${gold}$") if parse_number(gold) is not None else (f"${gold}$", gold)
    for text in texts:
        parsed = parse(text, parsing_timeout=timeout)
        if parsed:
            return tuple(parsed)
    return ()


def answers_match(pred: str, gold: str, timeout_seconds: int = 5, number_only: bool = False) -> bool:
    """True when the answer string ``pred`` states the reference answer ``gold``.

    Exact numbers first (fast, and immune to math-verify reading ``1,234`` as a tuple), then, unless
    ``number_only``, math-verify for everything else (expressions, ``2^3`` for ``8``, sets,
    intervals).
    """
    gold_num = parse_number(gold)
    if gold_num is not None:
        pred_num = answer_number(pred)
        if pred_num is not None and pred_num == gold_num:
            return True
    if number_only:
        return False
    return _math_verify_equal(gold, pred, timeout_seconds)


@REWARDS.register("math_answer", config=MathAnswer)
def math_answer(sample: Sample, cfg: MathAnswer) -> float:
    """1.0 when the final answer of ``sample.completion`` equals ``sample.answer``, else 0.0."""
    if sample.answer is None:
        raise ValueError("math_answer needs sample.answer (the task gave no reference answer)")
    pred = extract_answer(sample.completion, fallback=cfg.fallback)
    if pred is None:
        return 0.0
    return 1.0 if answers_match(pred, str(sample.answer), cfg.timeout_seconds, cfg.number_only) else 0.0


def _normalize(text: str, case_sensitive: bool) -> str:
    text = re.sub(r"\s+", " ", text).strip().rstrip(".").strip()
    return text if case_sensitive else text.casefold()


@REWARDS.register("exact_match", config=ExactMatch)
def exact_match(sample: Sample, cfg: ExactMatch) -> float:
    """1.0 when the (extracted) answer equals ``sample.answer`` after normalisation, else 0.0."""
    if sample.answer is None:
        raise ValueError("exact_match needs sample.answer (the task gave no reference answer)")
    pred = extract_answer(sample.completion, fallback=cfg.fallback) if cfg.extract else sample.completion
    if pred is None:
        return 0.0
    same = _normalize(pred, cfg.case_sensitive) == _normalize(str(sample.answer), cfg.case_sensitive)
    return 1.0 if same else 0.0


@REWARDS.register("format", config=Format)
def format_reward(sample: Sample, cfg: Format) -> float:
    """1.0 when the response states its final answer with the required marker, else 0.0."""
    found = [m for m in find_markers(sample.completion) if cfg.marker in ("any", m.kind)]
    if cfg.numeric:
        found = [m for m in found if answer_number(m.text) is not None]
    return 1.0 if found else 0.0
