"""Weighted sums of reward functions that never stop a run.

``combine([(MathAnswer(), 1.0), (Format(), 0.1), ("my_rewards.py:brevity", 0.5)])`` returns a
:class:`RewardRunner`: ``runner(sample)`` gives a ``RewardResult`` whose ``score`` is the weighted
sum and whose ``components`` are the individual (unweighted) scores; ``runner.score_batch(samples)``
gives ``(scores, components, num_errors)`` for a batch.

A term that raises, or returns NaN, inf or something that is not a number, scores 0 for that sample;
the error is counted (``num_errors``, reported by the trainer as ``reward/errors``) and logged once
per distinct message.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from anypo.errors import UserError
from anypo.registry import REGISTRIES, registry
from anypo.types import PartConfig, RewardResult, Sample

__all__ = ["BatchRewards", "RewardRunner", "RewardTerm", "combine", "load_reward_fn"]

logger = logging.getLogger(__name__)

RewardCallable = Callable[[Sample], "float | RewardResult"]
RewardItem = PartConfig | str | RewardCallable
MAX_LOGGED_ERRORS = 20  # distinct messages logged per runner; later ones are only counted


@dataclass(frozen=True)
class RewardTerm:
    """One weighted term of a combined reward.

    Attributes:
        name: component name (the registered name, or the function's name).
        fn: ``fn(sample) -> float | RewardResult``.
        weight: multiplier of the term's score in the sum.
    """

    name: str
    fn: RewardCallable
    weight: float = 1.0


class BatchRewards(NamedTuple):
    """Rewards of a batch of samples.

    Attributes:
        scores: [N] weighted sums.
        components: term name -> [N] unweighted scores of that term.
        num_errors: number of (sample, term) evaluations that failed in this batch and scored 0.
    """

    scores: list[float]
    components: dict[str, list[float]]
    num_errors: int

    def metrics(self) -> dict[str, float]:
        """Batch means for logging: ``reward/mean``, ``reward/<component>`` and ``reward/errors``."""
        n = max(len(self.scores), 1)
        out = {"reward/mean": sum(self.scores) / n}
        out.update({f"reward/{name}": sum(values) / n for name, values in self.components.items()})
        out["reward/errors"] = float(self.num_errors)
        return out


def load_reward_fn(spec: str) -> RewardCallable:
    """Import a user reward function ``fn(sample) -> float | RewardResult``.

    Args:
        spec: ``"package.module:function"`` or ``"path/to/file.py:function"``.

    Raises:
        ValueError: ``spec`` has no ``:function`` part, or names something that is not callable.
        FileNotFoundError / ModuleNotFoundError: the file or module does not exist.
        AttributeError: the module has no such function.
    """
    where, sep, fn_name = spec.rpartition(":")
    if not sep or not where or not fn_name:
        raise ValueError(f"reward function {spec!r}: expected 'module:function' or 'path/file.py:function'")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"reward function {spec!r}: no file {path}")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        mod_name = f"anypo_user_reward_{path.stem}_{digest}"
        module = sys.modules.get(mod_name)
        if module is None:
            mod_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_name] = module
            mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, fn_name):
        raise AttributeError(f"reward function {spec!r}: {module.__name__} has no attribute {fn_name!r}")
    fn = getattr(module, fn_name)
    if not callable(fn):
        raise ValueError(f"reward function {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def _term(item: RewardItem, weight: float) -> RewardTerm:
    """A ``RewardTerm`` from a part config, a registered name, a ``module:function`` or a callable."""
    if isinstance(item, PartConfig):
        reg = REGISTRIES["reward"]
        registry("reward")  # make sure the built-in parts are registered
        part_fn, name = reg.fn_for(item), reg.name_of(item)
        return RewardTerm(name, _bind(part_fn, item), weight)
    if isinstance(item, str):
        if ":" in item:
            fn = load_reward_fn(item)
            return RewardTerm(getattr(fn, "__name__", item), fn, weight)
        part_fn, config_cls = registry("reward").get(item)
        return RewardTerm(item, _bind(part_fn, config_cls()), weight)
    if callable(item):
        return RewardTerm(getattr(item, "__name__", type(item).__name__), item, weight)
    raise TypeError(f"cannot use {item!r} as a reward: give a reward config, a name, 'module:function' or a callable")


def _bind(part_fn: Callable[[Sample, Any], Any], cfg: PartConfig) -> RewardCallable:
    def call(sample: Sample) -> float | RewardResult:
        return part_fn(sample, cfg)

    call.__name__ = getattr(part_fn, "__name__", "reward")
    return call


def combine(items: Sequence[RewardItem | tuple[RewardItem, float]]) -> RewardRunner:
    """Combine rewards into one weighted sum.

    Args:
        items: each a reward (a registered part's config such as ``MathAnswer()``, a registered name
            such as ``"format"``, a ``"module:function"`` / ``"file.py:function"`` string, or a
            callable ``fn(sample)``), optionally paired with its weight (default 1.0).

    Returns:
        A runner computing ``score = sum_i weight_i * score_i``. Terms with the same name get a
        suffix (``format``, ``format_2``).
    """
    terms: list[RewardTerm] = []
    seen: dict[str, int] = {}
    for entry in items:
        item, weight = entry if isinstance(entry, tuple) else (entry, 1.0)
        term = _term(item, float(weight))
        seen[term.name] = seen.get(term.name, 0) + 1
        if seen[term.name] > 1:
            term = RewardTerm(f"{term.name}_{seen[term.name]}", term.fn, term.weight)
        terms.append(term)
    if not terms:
        raise ValueError("combine needs at least one reward")
    return RewardRunner(terms)


class RewardRunner:
    """Evaluates weighted reward terms on samples; failures score 0 and are counted, never raised
    (except a :class:`~anypo.errors.UserError`, such as a judge whose optional package is missing: that
    is a mistake in the run's set-up, which scoring every sample 0 would hide).

    Attributes:
        terms: the weighted terms, in order.
        num_errors: failed evaluations since creation (all batches).
    """

    def __init__(self, terms: Sequence[RewardTerm]):
        self.terms = tuple(terms)
        self.num_errors = 0
        self._logged: set[str] = set()

    @property
    def names(self) -> list[str]:
        """Component names, in order."""
        return [t.name for t in self.terms]

    def _fail(self, term: RewardTerm, message: str) -> None:
        self.num_errors += 1
        key = f"{term.name}: {message}"
        if key in self._logged or len(self._logged) > MAX_LOGGED_ERRORS:
            return
        self._logged.add(key)
        if len(self._logged) > MAX_LOGGED_ERRORS:
            logger.warning(
                "reward errors: more than %d distinct messages; only counting from now on", MAX_LOGGED_ERRORS
            )
        else:
            logger.warning("reward %r failed and scored 0 (logged once): %s", term.name, message)

    def _score_term(self, term: RewardTerm, sample: Sample) -> tuple[float, RewardResult | None]:
        """The term's score (0.0 on failure) and its full result when it returned one."""
        try:
            out = term.fn(sample)
        except UserError:  # a mistake in what was asked for (an optional package missing), not this sample's
            raise
        except Exception as e:  # a reward never stops the run
            self._fail(term, f"{type(e).__name__}: {e}")
            return 0.0, None
        result = out if isinstance(out, RewardResult) else None
        value = out.score if result is not None else out
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._fail(term, f"returned {type(value).__name__}, expected a float or RewardResult")
            return 0.0, None
        if not math.isfinite(value):
            self._fail(term, f"returned {value}")
            return 0.0, None
        return float(value), result

    def __call__(self, sample: Sample) -> RewardResult:
        """The weighted sum for one sample, with each term's score (and sub-components) and feedback.

        ``error`` is True when any term failed (its score then stands in as 0, which is no judgement of
        the sample: the online loop drops such samples instead of training on them).
        """
        total, components, feedback = 0.0, {}, []
        errors_before = self.num_errors
        for term in self.terms:
            score, result = self._score_term(term, sample)
            total += term.weight * score
            components[term.name] = score
            if result is not None:
                sub = {
                    f"{term.name}/{k}": float(v) for k, v in result.components.items() if isinstance(v, (int, float))
                }
                components.update(sub)
                if result.feedback:
                    feedback.append(result.feedback)
        return RewardResult(total, components, "\n".join(feedback) or None, error=self.num_errors > errors_before)

    def score_batch(self, samples: Sequence[Sample]) -> BatchRewards:
        """Score every sample; ``num_errors`` counts this batch's failures only."""
        before = self.num_errors
        scores: list[float] = []
        components: dict[str, list[float]] = {t.name: [] for t in self.terms}
        for sample in samples:
            result = self(sample)
            scores.append(result.score)
            for t in self.terms:
                components[t.name].append(result.components[t.name])
        return BatchRewards(scores, components, self.num_errors - before)
