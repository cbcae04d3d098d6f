"""A pairwise judge (an LLM judge, a human-in-the-loop script, an API) as a preference oracle.

No small LLM on PyPI judges these tasks better than chance (the issue's measurement), so a judge is
a plug-in, never a default: ``--oracle.kind judge --oracle.judge my_judge.py:judge``. The plug-in is
a batched function

    judge(prompts: list[str], first: list[str], second: list[str]) -> list[float | str | None]

whose verdicts say how much the ``first`` response is preferred: a probability in ``[0, 1]``, a
letter ``"A"`` (first) / ``"B"`` (second) / ``"tie"``, or the judge's raw text, which
:func:`parse_verdict` reads; ``None`` or an unparsable verdict means "could not judge" (NaN: the pair
is dropped and counted). Judges have position bias, so by default (``swap=True``) each pair is
judged in both orders and ``P(y > y2) = (v(y, y2) + 1 - v(y2, y)) / 2``; either order unjudged
leaves the pair unjudged. ``gold`` is not defined for a judge (NaN): a judge ranks, it does not score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from anypo.oracles.base import _check_batch

__all__ = ["JudgeOracle", "load_judge", "parse_verdict"]

Judge = Callable[[list[str], list[str], list[str]], Sequence[Any]]

_LETTER = re.compile(r"\b(A|B|tie)\b[\s.!)\]\"'*]*$", re.IGNORECASE)  # the last word; a question is no verdict


def parse_verdict(v: Any) -> float:
    """A verdict as ``P(first > second)``: a number in [0, 1] as is; ``"A"`` 1, ``"B"`` 0, ``"tie"`` 1/2
    (also the last word of a longer text, e.g. ``"... so the better one is B."``, but not a question
    such as ``"A or B?"``); anything else NaN."""
    if v is None or isinstance(v, bool):
        return math.nan
    if isinstance(v, (int, float)):
        return float(v) if 0.0 <= float(v) <= 1.0 else math.nan
    if isinstance(v, str):
        m = _LETTER.search(v.strip())
        if m:
            return {"a": 1.0, "b": 0.0, "tie": 0.5}[m.group(1).lower()]
    return math.nan


def _prompt_text(x: Any) -> str:
    return x.prompt if hasattr(x, "prompt") else str(x)


class JudgeOracle:
    """A batched pairwise judge as an oracle (see the module docstring).

    Args:
        judge: ``judge(prompts, first, second) -> verdicts`` (one per pair).
        swap: judge each pair in both orders and average (position-bias correction).
    """

    def __init__(self, judge: Judge, swap: bool = True):
        if not callable(judge):
            raise ValueError(f"JudgeOracle needs a callable judge(prompts, first, second), got {type(judge).__name__}")
        self.judge, self.swap = judge, swap
        self.num_unjudged = 0

    def _verdicts(self, prompts: list[str], a: list[str], b: list[str]) -> list[float]:
        try:
            out = list(self.judge(prompts, a, b))
        except Exception:  # a failing judge never stops the run: nothing of this batch is judged
            return [math.nan] * len(a)
        if len(out) != len(a):
            raise ValueError(f"the judge returned {len(out)} verdicts for {len(a)} pairs")
        return [parse_verdict(v) for v in out]

    def prob(self, xs: Sequence[Any], ys: Sequence[str], y2s: Sequence[str]) -> Tensor:
        _check_batch(xs, ys, y2s)
        prompts = [_prompt_text(x) for x in xs]
        p = self._verdicts(prompts, list(ys), list(y2s))
        if self.swap:
            q = self._verdicts(prompts, list(y2s), list(ys))
            p = [(a + 1.0 - b) / 2.0 for a, b in zip(p, q, strict=True)]  # NaN if either is NaN
        out = torch.tensor(p, dtype=torch.float64)
        self.num_unjudged += int(torch.isnan(out).sum())
        return out

    def gold(self, xs: Sequence[Any], ys: Sequence[str]) -> Tensor:
        _check_batch(xs, ys)
        return torch.full((len(ys),), math.nan, dtype=torch.float64)


def load_judge(spec: str) -> Judge:
    """Import ``judge`` from ``"package.module:function"`` or ``"path/file.py:function"``."""
    from anypo.rewards import load_reward_fn

    try:
        return load_reward_fn(spec)
    except ValueError as e:
        raise ValueError(str(e).replace("reward function", "oracle.judge")) from None
