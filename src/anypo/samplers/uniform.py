"""Prompt samplers (kind ``sampler``): which prompts each step trains on, how many samples each gets,
and which samples to keep.

A sampler is a class constructed as ``Cls(cfg, num_prompts, prompts_per_step, seed)``. Its one
interface (every method has a default here, so a sampler overrides only what it decides):

* ``next_prompts(step) -> list[int]``: the prompt indices of the next draw;
* ``group_sizes(indices, G) -> list[int]``: samples per drawn prompt (default ``G`` each; Rollout-GDRO
  and XRPO's allocator vary it; the sizes of one draw must be >= 1);
* ``observe(batch)``: every scored batch of the step (after the rollout part, reward errors dropped);
  this is where per-prompt statistics (:class:`anypo.samplers.stats.PromptStats`) are updated;
* ``keep(batch) -> Tensor bool [N]``: which samples of a draw to train on (DAPO's dynamic sampling);
* ``rescore_prompts(step) -> (indices, n)``: prompts to re-score before step ``step``'s draw, with
  ``n`` samples each (MMR1's periodic re-scoring of the whole training set); default none;
* ``rescore(batch)``: the scored re-scoring batch (never trained on);
* ``pop_metrics() -> dict[str, float]``: its diagnostics since the last call (the loop logs them
  under ``sampler/`` once per step);
* ``state_dict()`` / ``load_state_dict(state)``: everything above that changes, for exact resume.

The loop fills a step like this::

    idx, n = sampler.rescore_prompts(step)
    if idx: sampler.rescore(plain groups of n samples of each prompt in idx)
    while kept_groups < B and draws < cfg.max_draws:
        idx = sampler.next_prompts(step); sizes = sampler.group_sizes(idx, G)
        batch = rollout_part.collect(requests(idx, sizes), ...); sampler.observe(batch)
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

    def group_sizes(self, indices: list[int], group_size: int) -> list[int]:
        """Samples per prompt of ``indices``: ``group_size`` (G) each."""
        return [group_size] * len(indices)

    def observe(self, batch: RolloutBatch) -> None:
        """Uniform sampling learns nothing from the rollouts."""

    def rescore_prompts(self, step: int) -> tuple[list[int], int]:
        """Prompts to re-score before ``step``'s draw and samples per prompt: none."""
        return [], 0

    def rescore(self, batch: RolloutBatch) -> None:
        """The scored re-scoring batch; uniform sampling ignores it."""

    def pop_metrics(self) -> dict[str, float]:
        """Diagnostics since the last call (keys without the ``sampler/`` prefix): none."""
        return {}

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
