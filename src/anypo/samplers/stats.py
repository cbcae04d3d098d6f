"""Per-prompt statistics kept across steps and in checkpoints (the table curricula read).

Curricula and data selectors decide from what happened to each prompt before: its running pass rate
(prime-rl / verl difficulty filters), its pass rate on the last full re-scoring (MMR1's VAS), an EMA
difficulty per prompt (GDRO's bins), how often it was drawn. :class:`PromptStats` is that table, one
row per training prompt, updated from every scored batch the sampler observes. It is plain numpy
arrays, saved as lists in the sampler's ``state_dict`` (exact resume).

Per prompt ``i`` (``n_prompts`` rows):

* ``seen[i]``: samples of ``i`` scored so far (guided rows excluded, see below);
* ``passed[i]``: of those, how many were correct;
* ``ema[i]``: EMA of the per-draw pass rate, ``ema <- (1 - a) ema + a p`` with ``p`` the share of
  correct samples of one draw of ``i`` (NaN until the first draw; the first draw sets ``ema = p``);
* ``last[i]``: the pass rate of the last draw of ``i`` (NaN before);
* ``last_step[i]``: the step of that draw (-1 before);
* ``history[i]``: the pass rates of the last ``window`` draws, oldest first.

"Correct" is ``extras["correct"]`` (the task's correctness term) when the batch has it, else
``reward >= 1``. Rows marked ``extras["guided"]`` (their prompt carried a hint, a partial solution or a
replayed answer) are not the policy's own attempt at the plain prompt and are left out, so a hint
never makes a prompt look easier than it is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from anypo.types import RolloutBatch

__all__ = ["PromptStats", "correctness", "per_prompt_pass"]


def correctness(batch: RolloutBatch) -> list[float]:
    """[N] 1.0 / 0.0 per row: ``extras["correct"]`` when present, else ``rewards >= 1``."""
    c = batch.extras.get("correct")
    if c is not None and len(c) == batch.num_seqs:
        return [float(v) for v in c]
    return [float(r >= 1.0) for r in batch.rewards.tolist()]


def per_prompt_pass(batch: RolloutBatch, skip_guided: bool = True) -> dict[int, tuple[int, int]]:
    """``prompt index -> (correct, samples)`` of the rows of ``batch`` (guided rows left out)."""
    idx = batch.extras.get("prompt_index")
    if idx is None:
        raise ValueError("the batch has no extras['prompt_index']: per-prompt statistics need the rollout's index")
    guided = batch.extras.get("guided") or [False] * batch.num_seqs
    out: dict[int, tuple[int, int]] = {}
    for i, c, g in zip(idx, correctness(batch), guided, strict=True):
        if g and skip_guided:
            continue
        k, n = out.get(int(i), (0, 0))
        out[int(i)] = (k + int(c >= 1.0), n + 1)
    return out


class PromptStats:
    """The per-prompt table (see the module docstring).

    Args:
        n_prompts: rows (the training prompts).
        ema_rate: ``a`` of the EMA, in (0, 1].
        window: draws kept in ``history`` per prompt.
    """

    def __init__(self, n_prompts: int, ema_rate: float = 0.5, window: int = 4):
        if not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1], got {ema_rate}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.n, self.rate, self.window = n_prompts, ema_rate, window
        self.seen = np.zeros(n_prompts, dtype=np.int64)
        self.passed = np.zeros(n_prompts, dtype=np.int64)
        self.ema = np.full(n_prompts, np.nan)
        self.last = np.full(n_prompts, np.nan)
        self.last_step = np.full(n_prompts, -1, dtype=np.int64)
        self.history: list[list[float]] = [[] for _ in range(n_prompts)]

    def update(self, batch: RolloutBatch, step: int) -> dict[int, float]:
        """Add the rows of ``batch``; returns ``prompt -> pass rate`` of this draw (guided rows left out)."""
        rates = {}
        for i, (k, n) in per_prompt_pass(batch).items():
            p = k / n
            self.seen[i] += n
            self.passed[i] += k
            self.ema[i] = p if math.isnan(self.ema[i]) else (1 - self.rate) * self.ema[i] + self.rate * p
            self.last[i], self.last_step[i] = p, step
            self.history[i] = [*self.history[i], p][-self.window :]
            rates[i] = p
        return rates

    def mean_pass(self) -> np.ndarray:
        """[n_prompts] ``passed / seen`` over every draw (NaN where never seen)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.seen > 0, self.passed / np.maximum(self.seen, 1), np.nan)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "seen": self.seen.tolist(),
            "passed": self.passed.tolist(),
            "ema": [None if math.isnan(v) else float(v) for v in self.ema],
            "last": [None if math.isnan(v) else float(v) for v in self.last],
            "last_step": self.last_step.tolist(),
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(f"prompt statistics are for {state['n']} prompts, this run has {self.n}")
        self.seen = np.asarray(state["seen"], dtype=np.int64)
        self.passed = np.asarray(state["passed"], dtype=np.int64)
        self.ema = np.asarray([np.nan if v is None else v for v in state["ema"]], dtype=float)
        self.last = np.asarray([np.nan if v is None else v for v in state["last"]], dtype=float)
        self.last_step = np.asarray(state["last_step"], dtype=np.int64)
        self.history = [list(h) for h in state["history"]]
