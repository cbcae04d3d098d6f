"""Bradley-Terry preference oracles on the lexical judges: deliberately hackable preference sources.

``P(y > y2 | x) = sigmoid((s(y) - s(y2)) / T)`` with ``s`` a lexical judge's score of the response text
(``anypo.rewards.lexical``) and temperature ``T`` (``T = 0``: hard labels, 1/2 on a tie), the
Bradley-Terry model DPO assumes (arXiv 2305.18290, Eq. 1) with the reward ``s / T``, as
:class:`~anypo.oracles.verifier_bt.VerifierBT` but on text alone (no task verifier, no reference
answer), scored in one batched call per ``prob``:

* ``vader`` (``--oracle.kind vader``): ``s`` = VADER compound sentiment in ``[-1, 1]``, for the
  ``positive_continuation`` task; a policy learns that "great!!!" beats a sensible sentence.
* ``profanity`` (``--oracle.kind profanity``): ``s = 1 - P(offensive)`` from alt-profanity-check; a
  policy learns that any inoffensive text (even an empty one) is as good as the best answer.

``gold(x, y) = s(y)`` (what ``eval/gold`` reports). Both need the optional extra ``judges``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from anypo.oracles.base import _check_batch
from anypo.oracles.verifier_bt import bt_prob

__all__ = ["LEXICAL_JUDGES", "LexicalOracle", "lexical_oracle"]


def _scorers() -> dict[str, Callable[[Sequence[str]], list[float]]]:
    from anypo.rewards.lexical import non_toxicity_scores, vader_scores

    return {"vader": vader_scores, "profanity": non_toxicity_scores}


LEXICAL_JUDGES = ("vader", "profanity")
"""The oracle kinds of this module (``OracleConfig.kind``)."""


class LexicalOracle:
    """Bradley-Terry oracle on a batched text score (see the module docstring).

    Args:
        score: ``score(texts) -> list[float]``, one score per text (higher is preferred).
        temperature: ``T >= 0``; 0 gives hard labels.
        name: the judge's name (for messages).
    """

    def __init__(self, score: Callable[[Sequence[str]], list[float]], temperature: float = 0.0, name: str = "lexical"):
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"oracle.temperature must be >= 0 (0 for hard labels), got {temperature}")
        self.score, self.temperature, self.name = score, float(temperature), name
        self.num_unjudged = 0

    def gold(self, xs: Sequence[Any], ys: Sequence[str]) -> Tensor:
        _check_batch(xs, ys)
        return torch.tensor(self.score(list(ys)), dtype=torch.float64)

    def prob(self, xs: Sequence[Any], ys: Sequence[str], y2s: Sequence[str]) -> Tensor:
        B = _check_batch(xs, ys, y2s)
        s = self.score([*ys, *y2s])  # one batched call for both sides
        out = torch.tensor([bt_prob(s[b], s[B + b], self.temperature) for b in range(B)], dtype=torch.float64)
        self.num_unjudged += int(torch.isnan(out).sum())
        return out


def lexical_oracle(kind: str, temperature: float = 0.0) -> LexicalOracle:
    """The oracle of lexical judge ``kind`` (``vader`` or ``profanity``); a one-line ``UserError`` naming
    the ``judges`` extra when its package is not installed (checked here, before any sample)."""
    if kind not in LEXICAL_JUDGES:
        raise ValueError(f"lexical_oracle: kind must be one of {', '.join(LEXICAL_JUDGES)}, got {kind!r}")
    score = _scorers()[kind]
    score(["ok"])  # imports the package now: a missing extra fails at build time, not mid-run
    return LexicalOracle(score, temperature, kind)
