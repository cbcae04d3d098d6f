"""Reward shaping parts added to a task's reward.

``overlong``: DAPO's soft overlong punishment (Yu et al. 2025, https://arxiv.org/abs/2503.14476,
Eq. 13).
"""

from __future__ import annotations

from dataclasses import dataclass

from anypo.registry import REGISTRIES
from anypo.types import PartConfig, Sample

__all__ = ["Overlong", "overlong"]


@dataclass(frozen=True)
class Overlong(PartConfig):
    """DAPO soft overlong punishment (https://arxiv.org/abs/2503.14476, Eq. 13).

    With ``L`` the response length in tokens, ``L_max`` the generation limit and ``L_cache`` the
    punishment interval::

        R_len(L) = 0                                  if L <= L_max - L_cache
                 = ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
                 = -1                                 if L > L_max

    The paper trains with ``L_max = 20480`` and ``L_cache = 4096`` (expected length 16384). It is
    added to the correctness reward (use weight 1.0 in ``combine``). Deviation: none; note that a
    response cut at the limit has ``L == L_max`` and gets ``-1`` through the middle branch.
    """

    max_tokens: int | None = None
    """``L_max``; None uses ``sample.max_tokens`` (the generation limit of the rollout)."""
    cache_tokens: int | None = 4096
    """``L_cache``: length of the interval before ``L_max`` in which the penalty grows linearly
    from 0 to -1; must be smaller than ``L_max``. None: the paper's ratio, ``L_max // 5``
    (4096 / 20480), so the shaping scales with the run's generation limit."""


@REGISTRIES["reward"].register("overlong", config=Overlong)
def overlong(sample: Sample, cfg: Overlong) -> float:
    """R_len of ``sample.num_tokens`` (see :class:`Overlong`); 0 for lengths within budget."""
    max_tokens = cfg.max_tokens if cfg.max_tokens is not None else sample.max_tokens
    if max_tokens <= 0:
        raise ValueError("overlong needs a generation limit: set Overlong.max_tokens or sample.max_tokens")
    cache = cfg.cache_tokens if cfg.cache_tokens is not None else max(max_tokens // 5, 1)
    if not 0 < cache < max_tokens:
        raise ValueError(f"overlong: cache_tokens ({cache}) must be in (0, max_tokens={max_tokens})")
    expected = max_tokens - cache
    length = sample.num_tokens
    if length <= expected:
        return 0.0
    if length <= max_tokens:
        return (expected - length) / cache
    return -1.0
