"""The ``reasoning_gym`` reward: the generator's own ``score_answer`` (package ``reasoning-gym``).

The task (``anypo.tasks``, spec ``rg:<name>``) stores what scoring needs in ``sample.meta``:
``rg_dataset`` (generator name), ``rg_entry`` (the generated item: question, answer, metadata) and
``rg_options`` (the generator's config fields). ``reasoning_gym`` is imported on first use.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from anypo.registry import REGISTRIES
from anypo.rewards.extract import extract_answer
from anypo.types import PartConfig, Sample

__all__ = ["ReasoningGym", "reasoning_gym_reward", "rg_scorer"]


@dataclass(frozen=True)
class ReasoningGym(PartConfig):
    """Score of a reasoning-gym generator (https://github.com/open-thought/reasoning-gym).

    The final answer is extracted (``Answer:``, ``<answer>``, ``\\boxed{}``) and passed to the
    generator's ``score_answer(answer, entry)``, which returns a value in [0, 1] (some generators
    give partial credit).
    """

    fallback: Literal["last_number", "none"] = "none"
    """Without an answer marker: ``last_number`` scores the last number, ``none`` scores 0
    (reasoning-gym answers are often not numbers)."""


@functools.lru_cache(maxsize=64)
def _scorer(name: str, options_json: str) -> Callable[[str | None, dict[str, Any]], float]:
    import reasoning_gym

    options = json.loads(options_json)
    options.update(seed=0, size=1)  # scoring does not depend on the items' seed
    return reasoning_gym.create_dataset(name, **options).score_answer


def rg_scorer(name: str, options: dict[str, Any] | None = None) -> Callable[[str | None, dict[str, Any]], float]:
    """The ``score_answer`` method of reasoning-gym generator ``name`` built with ``options``."""
    return _scorer(name, json.dumps(options or {}, sort_keys=True, default=str))


@REGISTRIES["reward"].register("reasoning_gym", config=ReasoningGym)
def reasoning_gym_reward(sample: Sample, cfg: ReasoningGym) -> float:
    """The generator's score of the final answer of ``sample.completion``."""
    missing = [k for k in ("rg_dataset", "rg_entry") if k not in sample.meta]
    if missing:
        raise ValueError(f"reasoning_gym reward needs sample.meta {missing} (use a task 'rg:<name>')")
    answer = extract_answer(sample.completion, fallback=cfg.fallback)
    if answer is None:
        return 0.0
    score = rg_scorer(sample.meta["rg_dataset"], sample.meta.get("rg_options"))
    return float(score(answer, sample.meta["rg_entry"]))
