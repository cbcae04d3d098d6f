"""Stale rollouts: train each step on a batch that an older policy generated.

An asynchronous RL system (Trinity-RFT's explorer/trainer, verl's one-step-off-policy mode) trains
on rollouts of a policy that lags behind the one being trained. ``Replay`` reproduces that lag
exactly in the single-process loop: it fixes, for every training step, which policy version
generates the batch that step trains on, and ``StaleRollouts`` generates each batch at the moment
the weights are that version, queues it with its generation-time log-probs and hands it over at its
step. Nothing is recomputed under the current policy: ``old_logprobs`` stay the behaviour policy's.

Schedule (Trinity-RFT ``synchronizer.sync_interval`` = K, ``sync_offset`` = d). Step ``t`` (1-based)
trains on a batch generated with the weights after ``g(t)`` training steps::

    g(t) = K * floor(max(t - 1 - d, 0) / K)          staleness(t) = (t - 1) - g(t)

K = 1, d = 0 is ordinary on-policy training; K = 1, d = 1 is one-step off-policy (every batch one
step stale, from step 2); K = 20, d = 0 (the REC example of Trinity-RFT) refreshes the rollout
weights every 20 steps, so the 20 batches of a window are 0, 1, ..., 19 steps stale. At most
``K - 1 + d`` batches wait in the queue, each trained on exactly once.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from anypo.types import RolloutBatch

__all__ = ["Replay", "StaleRollouts"]


@dataclass(frozen=True)
class Replay:
    """When the rollout weights are refreshed: a schedule of stale rollouts (see the module docstring).

    Papers: the off-policy settings of "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm",
    https://arxiv.org/abs/2509.24203 (Trinity-RFT's ``sync_interval`` / ``sync_offset``; its REC
    example uses ``sync_interval: 20``). The default (1, 0) is on-policy: no queue at all.
    """

    sync_interval: int = 1
    """K: the rollout weights are refreshed every K training steps (Trinity ``sync_interval``)."""
    sync_offset: int = 0
    """d: the rollouts run d steps ahead of training (Trinity ``sync_offset``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.sync_interval, int) or self.sync_interval < 1:
            raise ValueError(
                f"Replay.sync_interval must be an integer >= 1 (1: fresh weights), got {self.sync_interval!r}"
            )
        if not isinstance(self.sync_offset, int) or self.sync_offset < 0:
            raise ValueError(f"Replay.sync_offset must be an integer >= 0 (0: no lag), got {self.sync_offset!r}")

    @property
    def active(self) -> bool:
        """Some step trains on rollouts of an older policy."""
        return self.max_staleness > 0

    @property
    def max_staleness(self) -> int:
        """The largest staleness of any step: ``K - 1 + d``."""
        return self.sync_interval - 1 + self.sync_offset

    def generated_with(self, step: int) -> int:
        """``g(step)``: how many training steps the weights that generate step ``step``'s batch have seen."""
        k, d = self.sync_interval, self.sync_offset
        return k * (max(step - 1 - d, 0) // k)

    def staleness(self, step: int) -> int:
        """Training steps between the generating policy and the policy trained at ``step``."""
        return step - 1 - self.generated_with(step)


@dataclass(frozen=True)
class _Entry:
    step: int  # the training step that consumes it
    version: int  # training steps the generating weights had seen
    batch: RolloutBatch
    metrics: dict[str, float]


class _Snapshot:
    """The queue as it was at a step's end. Its entries are never changed (``pop`` hands out copies),
    so a deep copy of it is itself: the scaffold snapshots the step state every step, and a queue of
    ``K - 1 + d`` batches would otherwise be copied each time."""

    def __init__(self, entries: tuple[_Entry, ...], generated_upto: int):
        self.entries, self.generated_upto = entries, generated_upto

    def __deepcopy__(self, memo: dict) -> _Snapshot:
        return self


class StaleRollouts:
    """The queue of batches generated ahead of the step that trains on them.

    Args:
        schedule: when the rollout weights are refreshed.
        last_step: the run's last step (no batch is generated for a step after it).
        generate: ``generate(step) -> (batch, metrics)`` collects and scores step ``step``'s batch
            with the current weights (and fills the behaviour log-probs the learner needs).
    """

    def __init__(
        self,
        schedule: Replay,
        last_step: int,
        generate: Callable[[int], tuple[RolloutBatch, dict[str, float]]],
    ):
        self.schedule, self.last_step, self.generate = schedule, last_step, generate
        self.entries: list[_Entry] = []
        self.generated_upto = 0  # the last step whose batch exists (queued or already trained on)

    def due(self, step: int) -> list[int]:
        """Steps whose batches are generated at the start of ``step`` (weights after ``step - 1`` steps)."""
        out = []
        t = self.generated_upto + 1
        while t <= self.last_step and self.schedule.generated_with(t) <= step - 1:
            out.append(t)
            t += 1
        return out

    def next(self, step: int) -> tuple[RolloutBatch, dict[str, float], dict[str, float]]:
        """Generate what is due now, then hand out step ``step``'s batch.

        Returns:
            the batch (with ``staleness`` [N] set), its rollout metrics (those of its own generation:
            rewards, lengths, draws), and this step's generation and queue metrics
            (``rollout/generated_tokens`` of the batches generated now, ``replay/*``).
        """
        now: dict[str, float] = {"rollout/generated_tokens": 0.0, "replay/generated_batches": 0.0}
        for t in self.due(step):
            batch, m = self.generate(t)
            now["rollout/generated_tokens"] += m.get("rollout/generated_tokens", 0.0)
            now["replay/generated_batches"] += 1.0
            self.entries.append(_Entry(t, step - 1, batch, m))
            self.generated_upto = t
        if not self.entries or self.entries[0].step != step:
            raise RuntimeError(f"no rollout batch queued for step {step} (replay schedule {self.schedule})")
        entry = self.entries.pop(0)
        batch = _copy(entry.batch)
        stale = step - 1 - entry.version
        batch.staleness = torch.full((batch.num_seqs,), float(stale))
        now["replay/staleness_mean"] = float(stale)  # every row of a batch shares its generating policy
        now["replay/staleness_max"] = float(stale)
        now["replay/queued_batches"] = float(len(self.entries))
        metrics = {k: v for k, v in entry.metrics.items() if k != "rollout/generated_tokens"}
        return batch, metrics, now

    def state_dict(self) -> _Snapshot:
        return _Snapshot(tuple(self.entries), self.generated_upto)

    def load_state_dict(self, state: _Snapshot) -> None:
        self.entries, self.generated_upto = list(state.entries), int(state.generated_upto)


def _copy(batch: RolloutBatch) -> RolloutBatch:
    """A copy whose tensors and extras the step may change without touching the queued original."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        fields[f.name] = v.clone() if isinstance(v, torch.Tensor) else copy.copy(v)
    return RolloutBatch(**fields)
