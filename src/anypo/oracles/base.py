"""The one interface of every preference source, and the helpers the loops build on it.

A preference oracle answers, for a batch of prompts and two responses each,
``P(y > y2 | x)`` in ``[0, 1]`` (``prob``), with NaN where it could not judge (a reward that failed,
an unparsable verdict). Loops drop an unjudged pair and count it; it is never read as a tie.
An oracle also gives a scalar ``gold(x, y)`` (the quantity evaluation reports as gold reward) and a
running count of unjudged pairs (``num_unjudged``).

``P(y > y2) + P(y2 > y) = 1`` and ``P(y > y) = 1/2`` hold for every oracle here (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["PreferenceOracle", "hard_label", "preference_matrices", "preference_matrix"]


@runtime_checkable
class PreferenceOracle(Protocol):
    """``prob(xs, ys, y2s) -> Tensor [B]`` float64 ``P(y_b > y2_b | x_b)``, NaN where not judged.

    ``xs`` are task examples (``anypo.tasks.Example``: prompt, reference answer, meta), ``ys`` and
    ``y2s`` response texts; the three sequences have the same length ``B``.
    """

    num_unjudged: int
    """Pairs this oracle could not judge so far (all calls)."""

    def prob(self, xs: Sequence[Any], ys: Sequence[str], y2s: Sequence[str]) -> Tensor: ...

    def gold(self, xs: Sequence[Any], ys: Sequence[str]) -> Tensor:
        """``[B]`` float64 gold score of each response (NaN where it failed)."""
        ...


def _check_batch(xs: Sequence[Any], ys: Sequence[str], y2s: Sequence[str] | None = None) -> int:
    if y2s is not None and not len(xs) == len(ys) == len(y2s):
        raise ValueError(f"prob needs as many prompts as response pairs, got {len(xs)}, {len(ys)}, {len(y2s)}")
    if y2s is None and len(xs) != len(ys):
        raise ValueError(f"gold needs one prompt per response, got {len(xs)} prompts and {len(ys)} responses")
    return len(ys)


def preference_matrix(oracle: PreferenceOracle, x: Any, ys: Sequence[str]) -> Tensor:
    """The ``[K, K]`` float64 matrix ``P[i, j] = P(y_i > y_j | x)`` of ``K`` responses to one prompt.

    The ``K (K - 1) / 2`` pairs ``i < j`` go to the oracle in one batched call; ``P[j, i] = 1 - P[i, j]``
    and the diagonal is 1/2 (SPPO's ``compute_prob.py``: ``P_ii = sigmoid(0)``). Unjudged entries are
    NaN on both sides.
    """
    K = len(ys)
    P = torch.full((K, K), 0.5, dtype=torch.float64)
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    if pairs:
        p = oracle.prob([x] * len(pairs), [ys[i] for i, _ in pairs], [ys[j] for _, j in pairs])
        for (i, j), v in zip(pairs, p.tolist(), strict=True):
            P[i, j], P[j, i] = v, 1.0 - v
    return P


def preference_matrices(oracle: PreferenceOracle, xs: Sequence[Any], groups: Sequence[Sequence[str]]) -> list[Tensor]:
    """:func:`preference_matrix` of every prompt ``xs[b]`` and its responses ``groups[b]``, with all
    the prompts' pairs in one batched ``oracle.prob`` call (what a judge that batches wants)."""
    if len(xs) != len(groups):
        raise ValueError(
            f"preference_matrices needs one group of responses per prompt, got {len(xs)} and {len(groups)}"
        )
    pairs = [(b, i, j) for b, ys in enumerate(groups) for i in range(len(ys)) for j in range(i + 1, len(ys))]
    out = [torch.full((len(ys), len(ys)), 0.5, dtype=torch.float64) for ys in groups]
    if pairs:
        p = oracle.prob(
            [xs[b] for b, _, _ in pairs], [groups[b][i] for b, i, _ in pairs], [groups[b][j] for b, _, j in pairs]
        )
        for (b, i, j), v in zip(pairs, p.tolist(), strict=True):
            out[b][i, j], out[b][j, i] = v, 1.0 - v
    return out


def hard_label(p: float) -> int | None:
    """1 when ``p > 1/2`` (the first response preferred), 0 when ``p < 1/2``, None for a tie or NaN."""
    if math.isnan(p) or p == 0.5:
        return None
    return 1 if p > 0.5 else 0
