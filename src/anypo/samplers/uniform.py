"""Prompt samplers (kind ``sampler``): which prompts each step trains on, and which samples to keep.

A sampler is a class constructed as ``Cls(cfg, num_prompts, prompts_per_step, seed)`` with
``next_prompts(step) -> list[int]``, ``observe(batch)``, ``keep(batch) -> Tensor bool [N]``,
``state_dict()`` and ``load_state_dict(state)``. The loop fills a step like this::

    while kept_groups < B and draws < cfg.max_draws:
        idx = sampler.next_prompts(step); batch = rollout(idx); sampler.observe(batch)
        batch = batch.select(sampler.keep(batch)); ...concatenate...
    ...then trims to B groups.

Every sampler config has ``max_draws`` (1 for samplers that never drop samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anypo.registry import REGISTRIES
from anypo.types import PartConfig, RolloutBatch

SAMPLERS = REGISTRIES["sampler"]

__all__ = ["SAMPLERS", "UniformConfig", "UniformSampler"]


@dataclass(frozen=True)
class UniformConfig(PartConfig):
    """Uniform sampling without replacement, reshuffled every epoch (the default of every paper)."""

    max_draws: int = 1
    """Rollout draws the loop may make to fill one step (uniform keeps everything: 1)."""

    def __post_init__(self) -> None:
        if self.max_draws < 1:
            raise ValueError(f"max_draws must be >= 1, got {self.max_draws}")


@SAMPLERS.register("uniform", config=UniformConfig)
class UniformSampler:
    """Seeded epoch-by-epoch shuffling without replacement; deterministic and resumable.

    Epoch ``e`` visits the prompts in the order ``permutation(seed, e)``; a step that reaches the
    end of an epoch continues into the next one. The state is ``(epoch, cursor)``, so a resumed
    run draws exactly the prompts the uninterrupted run would have.

    Args:
        cfg: the sampler config.
        num_prompts: size of the prompt dataset.
        prompts_per_step: B, prompts per call of ``next_prompts``.
        seed: seed of the shuffles.
    """

    def __init__(self, cfg: UniformConfig, num_prompts: int, prompts_per_step: int, seed: int):
        if num_prompts < 1 or prompts_per_step < 1:
            raise ValueError(f"need num_prompts >= 1 and prompts_per_step >= 1, got {num_prompts}, {prompts_per_step}")
        self.cfg = cfg
        self.num_prompts = num_prompts
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self._epoch = 0
        self._cursor = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        # One independent stream per (seed, epoch): no generator state to save.
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_prompts).tolist()

    def next_prompts(self, step: int) -> list[int]:
        """The next ``prompts_per_step`` prompt indices (``step`` is informational here)."""
        out: list[int] = []
        while len(out) < self.prompts_per_step:
            if self._cursor >= self.num_prompts:
                self._epoch += 1
                self._cursor = 0
                self._order = self._permutation(self._epoch)
            take = min(self.prompts_per_step - len(out), self.num_prompts - self._cursor)
            out.extend(self._order[self._cursor : self._cursor + take])
            self._cursor += take
        return out

    def observe(self, batch: RolloutBatch) -> None:
        """Uniform sampling learns nothing from the rollouts."""

    def keep(self, batch: RolloutBatch) -> Tensor:
        """[N] bool: keep every sample."""
        return torch.ones(batch.num_seqs, dtype=torch.bool, device=batch.rewards.device)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "cursor": self._cursor, "seed": self.seed, "num_prompts": self.num_prompts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_prompts"] != self.num_prompts:
            raise ValueError(f"sampler state is for {state['num_prompts']} prompts, this run has {self.num_prompts}")
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._cursor = int(state["cursor"])
        self._order = self._permutation(self._epoch)
