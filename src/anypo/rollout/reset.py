"""DR-PO's dataset reset: rollouts that start inside a reference response (teacher-forced roll-in of
its first ``h`` tokens, then free continuation), with the roll-in masked out of the loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anypo.rollout.groups import Request
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.types import PartConfig, RolloutBatch

__all__ = ["DatasetReset", "DatasetResetConfig", "rollin_lengths"]


@dataclass(frozen=True)
class DatasetResetConfig(PartConfig):
    """Dataset Reset Policy Optimization: reset rollouts to states of the offline preferred response.

    Paper: "Dataset Reset Policy Optimization for RLHF", https://arxiv.org/abs/2404.08495 (arXiv id
    from the project spec; the code was read there: github.com/Cornell-RL/drpo ``src/tldr/drpo.py``
    and github.com/Cornell-RL/tril ``RollinProcessor.create_mask``). For every sample, with
    probability ``beta`` a roll-in length ``h`` is drawn uniformly from ``{1, ..., L_ref - 1}``
    (``L_ref`` = tokens of the reference response; ``L_ref < 2``: no reset); the first ``h`` tokens of
    the reference are forced, the policy continues from there. The roll-in tokens are response
    context with ``response_mask`` 0: no policy gradient, no advantage (the code's
    ``(1 - rollin_mask)`` on the PPO loss). The random draws follow the code's order: one Bernoulli
    per sample, then one uniform draw per sample whose reference has >= 2 tokens.

    The reference response is the example's worked ``solution`` (built-in tasks) or the dataset's
    ``solution`` field; prompts without one are generated from scratch. Deviations: the
    continuation gets the full ``max_new_tokens`` (the code fixes the total response length); the
    code also scores the KL penalty on the roll-in tokens and trains the value head there, here both
    act on the generated tokens only (the masked tokens are not the policy's actions). With
    ``max_rollin_tokens`` set, the draw is uniform on ``{1, ..., min(L_ref - 1, max_rollin_tokens)}``
    (the paper's TL;DR references are short; a worked math solution of 300+ tokens makes every
    sample a 300-token context that the training pass must run with gradient).
    """

    beta: float = 1.0
    """Probability that a sample is reset into the reference (code ``beta=1.0``: every sample)."""
    max_rollin_tokens: int = 0
    """Longest roll-in in tokens (the reference is cut to its first ``max_rollin_tokens + 1`` tokens
    before the draw); 0: no cap, as in the code."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.max_rollin_tokens < 0:
            raise ValueError(f"max_rollin_tokens must be >= 0 (0: no cap), got {self.max_rollin_tokens}")


def rollin_lengths(ref_lengths: Sequence[int], beta: float, rng: np.random.Generator) -> list[int]:
    """Roll-in length per sample: 0 (no reset) or uniform on ``{1, ..., L - 1}``, drawn as the code
    draws them (a Bernoulli per sample first, then a uniform draw per sample with ``L >= 2``)."""
    reset = rng.choice([True, False], size=(len(ref_lengths), 1), p=[beta, 1 - beta])[:, 0]
    out = []
    for L, on in zip(ref_lengths, reset, strict=True):
        h = int(rng.choice(L - 1)) + 1 if L >= 2 else 0  # the code draws a row of tril(L x L)[:L-1]
        out.append(h if on else 0)
    return out


@ROLLOUTS.register("dataset_reset", config=DatasetResetConfig)
class DatasetReset(RolloutPart):
    """DR-PO's roll-ins from the reference response (see :class:`DatasetResetConfig`)."""

    cfg: DatasetResetConfig

    def __init__(self, cfg: DatasetResetConfig, groups):
        super().__init__(cfg, groups)
        self._ref: dict[int, tuple[int, ...]] = {}

    def reference(self, index: int) -> tuple[int, ...]:
        """Token ids of prompt ``index``'s reference response (empty without one), cached."""
        if index not in self._ref:
            ex = self.groups.examples[index] if self.groups.examples is not None else None
            self._ref[index] = self.groups.encode(ex.solution) if ex is not None and ex.solution else ()
        return self._ref[index]

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        rng = np.random.default_rng([seed, 59])
        rows, owner = [], []
        for k, r in enumerate(requests):
            ref = self.reference(r.index)
            if self.cfg.max_rollin_tokens:
                ref = ref[: self.cfg.max_rollin_tokens + 1]  # h <= L - 1 = the cap
            for h in rollin_lengths([len(ref)] * r.n, self.cfg.beta, rng):
                rows.append(Request(r.index, 1, r.insert, ref[:h]))
                owner.append(k)
        batch = self.groups.collect(rows, seed, 0)
        batch.group_ids = torch.tensor(owner, dtype=torch.long) + group_offset
        h = batch.extras["rollin_tokens"]
        self.add("reset_rollin_tokens", sum(h))
        self.add("reset_samples", sum(1 for v in h if v))
        return batch
