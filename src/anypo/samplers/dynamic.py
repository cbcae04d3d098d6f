"""DAPO's dynamic sampling: drop prompt groups whose samples all got the same reward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from anypo.ops import group_reduce
from anypo.samplers.uniform import SAMPLERS, UniformConfig, UniformSampler
from anypo.types import RolloutBatch

__all__ = ["DynamicSampler", "DynamicSamplingConfig"]


@dataclass(frozen=True)
class DynamicSamplingConfig(UniformConfig):
    """Dynamic sampling: over-sample and keep only groups with a non-zero reward spread.

    Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
    https://arxiv.org/abs/2503.14476, Sec. 3.2 (constraint ``0 < |{o_i : is_equivalent(a, o_i)}| <
    G``): a group whose rewards are all equal has zero group-relative advantage and so no gradient.
    Prompts are drawn as ``uniform``; ``max_draws`` caps the draws per step (verl DAPO recipe
    ``max_num_gen_batches=10``). Deviation: the paper filters on accuracy; here ``metric`` names the
    per-sample value to test (``None``: ``batch.rewards``; e.g. ``"correct"`` for ``extras["correct"]``
    or the ``"correct"`` entry of every ``extras["components"]`` dict),
    because rewards shaped by length (overlong shaping) can differ inside an all-correct group.
    """

    max_draws: int = 10
    """Rollout draws the loop may make to fill one step with kept groups."""
    metric: str | None = None
    """Per-sample [N] value whose spread decides: None = batch.rewards, else batch.extras[metric]."""


@SAMPLERS.register("dynamic_sampling", config=DynamicSamplingConfig)
class DynamicSampler(UniformSampler):
    """Uniform prompt order; ``keep`` drops groups with equal values (all right or all wrong).

    Args:
        cfg: the sampler config.
        num_prompts: size of the prompt dataset.
        prompts_per_step: B, prompts per draw.
        seed: seed of the shuffles.
    """

    cfg: DynamicSamplingConfig

    def __init__(self, cfg: DynamicSamplingConfig, num_prompts: int, prompts_per_step: int, seed: int):
        super().__init__(cfg, num_prompts, prompts_per_step, seed)
        self.kept_groups = 0
        self.dropped_groups = 0

    def _values(self, batch: RolloutBatch) -> Tensor:
        """[N] the values tested: rewards, ``extras[metric]``, or ``extras["components"][i][metric]``."""
        key = self.cfg.metric
        if key is None:
            return batch.rewards
        if key in batch.extras:
            v = batch.extras[key]
            return v if isinstance(v, Tensor) else batch.rewards.new_tensor(v)
        components = batch.extras.get("components")
        if isinstance(components, list) and all(isinstance(c, dict) and key in c for c in components):
            return batch.rewards.new_tensor([float(c[key]) for c in components])
        raise KeyError(
            f"dynamic_sampling metric {key!r} is neither in batch.extras nor in every extras['components'] entry"
        )

    def keep(self, batch: RolloutBatch) -> Tensor:
        """[N] bool: True for the samples of groups whose values are not all equal."""
        v = self._values(batch).to(batch.rewards.dtype)  # [N]
        spread = group_reduce(v, batch.group_ids, "amax") > group_reduce(v, batch.group_ids, "amin")  # [N]
        groups = batch.group_ids.unique()
        kept = batch.group_ids[spread].unique().numel()
        self.kept_groups += kept
        self.dropped_groups += groups.numel() - kept
        return spread

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"kept_groups": self.kept_groups, "dropped_groups": self.dropped_groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kept_groups = int(state.get("kept_groups", 0))
        self.dropped_groups = int(state.get("dropped_groups", 0))
