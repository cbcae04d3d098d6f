"""Combining the metrics of micro-batches and mini-batches so that no logged value depends on how a
batch was split (``micro_batch_size`` is a memory knob, never a results knob).

Each metric combines by its reduction (``LossOutput.reduction``): ``sum`` for values already
normalised by the mini-batch's global counts (their micro-batch values are partial sums),
``token_mean`` / ``seq_mean`` for averages over a micro-batch's tokens / sequences (re-weighted by
the micro-batch's share of the mini-batch's tokens / sequences), ``max`` / ``min`` for extremes.
"""

from __future__ import annotations

from anypo.types import MetricReduction

__all__ = ["MetricAccumulator"]


class MetricAccumulator:
    """Accumulates ``(key, value, reduction)`` over the parts of a whole and gives the whole's values.

    ``add(key, value, reduction, token_share, seq_share)``: ``token_share`` and ``seq_share`` are the
    part's fractions of the whole's tokens and sequences. Means are share-weighted sums, so they equal
    the whole's mean when the shares add up to 1.
    """

    def __init__(self) -> None:
        self._values: dict[str, float] = {}
        self._reductions: dict[str, MetricReduction] = {}

    def add(self, key: str, value: float, reduction: MetricReduction, token_share: float, seq_share: float) -> None:
        """Fold one part's ``value`` of ``key`` in."""
        self._reductions.setdefault(key, reduction)
        old = self._values.get(key)
        if reduction == "max":
            self._values[key] = value if old is None else max(old, value)
        elif reduction == "min":
            self._values[key] = value if old is None else min(old, value)
        else:
            w = {"sum": 1.0, "token_mean": token_share, "seq_mean": seq_share}[reduction]
            self._values[key] = (old or 0.0) + w * value

    def reduction(self, key: str) -> MetricReduction:
        return self._reductions[key]

    def result(self) -> dict[str, float]:
        return dict(self._values)


def mean_over_steps(steps: list[dict[str, float]], reductions: dict[str, MetricReduction]) -> dict[str, float]:
    """The metrics of several optimizer steps in one logged row: extremes stay extremes, timings
    (``time/*``) and counts add up, everything else is the mean over the steps that logged it."""
    out: dict[str, float] = {}
    keys = {k for d in steps for k in d}
    for k in sorted(keys):
        vals = [d[k] for d in steps if k in d]
        red = reductions.get(k, "token_mean")
        if red == "max":
            out[k] = max(vals)
        elif red == "min":
            out[k] = min(vals)
        elif k.startswith("time/"):
            out[k] = sum(vals)
        else:
            out[k] = sum(vals) / len(vals)
    return out
