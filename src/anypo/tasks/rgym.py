"""Any generator of the ``reasoning-gym`` package as a task: ``rg:<name>`` or ``reasoning_gym:<name>``.

``reasoning_gym`` is imported when the task is built, not when ``anypo`` is. Items are generated in
chunks of a seeded dataset; the held-out set comes from ``heldout_seed`` and training items with a
held-out question are skipped. The reward is the generator's own ``score_answer``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from anypo.rewards import Format, ReasoningGym
from anypo.tasks.base import ANSWER_INSTRUCTION, Example, Task, TaskConfig, stable_seed
from anypo.types import PartConfig

__all__ = ["ReasoningGymTask", "reasoning_gym_names"]

CHUNK = 500  # items per seeded reasoning-gym dataset
MAX_CHUNKS = 200


def reasoning_gym_names() -> list[str]:
    """Names of every reasoning-gym generator (imports the package)."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class ReasoningGymTask(Task):
    """Questions of reasoning-gym generator ``generator``, configured by ``config.options``."""

    default_instruction = ANSWER_INSTRUCTION
    default_num_train = 2000

    def __init__(self, config: TaskConfig, generator: str):
        super().__init__(config)
        try:
            import reasoning_gym  # noqa: F401
        except ImportError as e:
            raise ImportError("tasks 'rg:<name>' need the package reasoning-gym: pip install reasoning-gym") from e
        names = reasoning_gym_names()
        if generator not in names:
            import difflib

            close = difflib.get_close_matches(generator, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown reasoning-gym generator {generator!r}.{hint} See reasoning_gym.factory.DATASETS.")
        if config.digits is not None or config.terms is not None:
            raise ValueError("digits/terms do not apply to reasoning-gym tasks: set the generator's fields in options")
        self.generator = generator

    def _items(self, seed: int) -> Iterator[dict[str, Any]]:
        """Items of consecutive seeded chunks (bounded, so a tiny problem space cannot hang)."""
        import reasoning_gym

        for chunk in range(MAX_CHUNKS):
            options = {**self.config.options, "seed": stable_seed(seed, chunk), "size": CHUNK}
            yield from reasoning_gym.create_dataset(self.generator, **options)

    def _example(self, entry: dict[str, Any]) -> Example:
        meta = {"rg_dataset": self.generator, "rg_entry": entry, "rg_options": dict(self.config.options)}
        return self.make_example(entry["question"], str(entry["answer"]), entry["question"], meta)

    def _take(self, seed: int, n: int, banned: frozenset[str], unique: bool) -> list[Example]:
        out: list[Example] = []
        seen: set[str] = set()
        if n <= 0:
            return out
        for entry in self._items(seed):
            q = entry["question"]
            if q in banned or (unique and q in seen):
                continue
            seen.add(q)
            out.append(self._example(entry))
            if len(out) == n:
                return out
        raise ValueError(f"reasoning-gym {self.generator!r} gave only {len(out)} of {n} usable items; lower the count")

    @functools.cached_property
    def _heldout(self) -> list[Example]:
        return self._take(stable_seed("heldout", self.config.heldout_seed), self.config.num_heldout, frozenset(), True)

    @functools.cached_property
    def heldout_keys(self) -> frozenset[str]:
        """Questions of the held-out set; training never yields them."""
        return frozenset(ex.canonical_key for ex in self._heldout)

    def train_examples(self, n: int | None = None) -> list[Example]:
        n = self.num_train if n is None else n
        return self._take(stable_seed("train", self.config.seed), n, self.heldout_keys, False)

    def heldout_examples(self, n: int | None = None) -> list[Example]:
        n = self.config.num_heldout if n is None else n
        if n > self.config.num_heldout:
            raise ValueError(f"asked for {n} held-out examples, the task has num_heldout={self.config.num_heldout}")
        return self._heldout[:n]

    def default_reward(self) -> tuple[tuple[PartConfig, float], ...]:
        """The generator's score (``reasoning_gym``, weight 1) and a ``format`` bonus (0.1)."""
        return ((ReasoningGym(), 1.0), (Format(), 0.1))
