"""A Bradley-Terry preference oracle from the built-in tasks' verifiable reward.

``P(y > y2 | x) = sigmoid((s(x, y) - s(x, y2)) / T)`` with ``s`` the task's reward (by default its
default reward: correctness 1 plus 0.1 for the answer format on the arithmetic tasks) and temperature
``T``; ``T = 0`` gives hard labels: 1 if ``s(y) > s(y2)``, 0 if smaller, 1/2 on a tie. This is the
Bradley-Terry model (Bradley & Terry 1952) that DPO assumes (arXiv 2305.18290, Eq. 1) with the
reward ``s / T``. A pair whose reward evaluation failed (``RewardResult.error``) is not judged (NaN)
and counted in ``num_unjudged``. ``gold(x, y) = s(x, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anypo.oracles.base import _check_batch

__all__ = ["VerifierBT", "bt_prob"]


def bt_prob(s: float, s2: float, temperature: float) -> float:
    """``sigmoid((s - s2) / T)``; at ``T = 0`` the hard label (1, 0, or 1/2 on a tie); NaN if either is NaN."""
    if math.isnan(s) or math.isnan(s2):
        return math.nan
    d = s - s2
    if temperature == 0.0:
        return 1.0 if d > 0 else 0.0 if d < 0 else 0.5
    z = d / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class VerifierBT:
    """Bradley-Terry oracle on a verifiable reward (see the module docstring).

    Args:
        reward: ``reward(sample) -> RewardResult`` (an ``anypo.rewards.RewardRunner``, e.g.
            ``task.reward()``); ``Example.to_sample(text)`` builds its input.
        temperature: ``T >= 0``; 0 gives hard labels.
    """

    def __init__(self, reward: Any, temperature: float = 0.0):
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"oracle.temperature must be >= 0 (0 for hard labels), got {temperature}")
        self.reward, self.temperature = reward, float(temperature)
        self.num_unjudged = 0

    def _score(self, x: Any, y: str) -> float:
        res = self.reward(x.to_sample(y))
        return math.nan if getattr(res, "error", False) else float(res.score)

    def gold(self, xs: Sequence[Any], ys: Sequence[str]) -> Tensor:
        _check_batch(xs, ys)
        return torch.tensor([self._score(x, y) for x, y in zip(xs, ys, strict=True)], dtype=torch.float64)

    def prob(self, xs: Sequence[Any], ys: Sequence[str], y2s: Sequence[str]) -> Tensor:
        _check_batch(xs, ys, y2s)
        s = self.gold(xs, ys).tolist()
        s2 = self.gold(xs, y2s).tolist()
        out = torch.tensor([bt_prob(a, b, self.temperature) for a, b in zip(s, s2, strict=True)], dtype=torch.float64)
        self.num_unjudged += int(torch.isnan(out).sum())
        return out
