"""Tasks: examples with reference answers, disjoint train / held-out splits, and a default reward.

A :class:`Task` gives ``train_examples(n)`` and ``heldout_examples(n)``. Procedural tasks draw
problems from two seeded random streams: the held-out set is drawn first from ``heldout_seed``
(deduplicated, a fixed set that does not depend on the training ``seed``) and the training stream
skips every problem whose canonical key is in it, so the splits are disjoint by construction.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anypo.rewards import Format, MathAnswer, RewardRunner, combine
from anypo.types import PartConfig, Sample

__all__ = [
    "ANSWER_INSTRUCTION",
    "EXPRESSION_INSTRUCTION",
    "Example",
    "ProceduralTask",
    "Task",
    "TaskConfig",
    "format_prompt",
    "stable_seed",
]

ANSWER_INSTRUCTION = "Put the final answer after 'Answer:'."
"""Appended to the questions of the arithmetic and reasoning-gym tasks. Short and literal: of five
wordings tried on SmolLM2-135M-Instruct (32 addition prompts, temperature 1), this one was followed
most often (25%, against 6% for "End your reply with 'Answer: ' followed by the number.")."""
EXPRESSION_INSTRUCTION = "Put the final expression after 'Answer:'."
"""Appended to countdown questions."""


@dataclass(frozen=True)
class TaskConfig:
    """Which task to train and evaluate on, and how to build it."""

    name: str = "addition"
    """Task: ``addition``, ``multiplication``, ``arithmetic``, ``countdown``, ``graded_arithmetic``,
    ``graded_countdown``, ``addition_proxy``, ``addition_length_proxy``, ``positive_continuation``, ``rg:<generator>``
    (any reasoning-gym generator, also ``reasoning_gym:<generator>``), ``file`` (uses ``path``) or a
    path to a ``.jsonl`` / ``.json`` / ``.parquet`` file or a saved HF dataset directory."""
    seed: int = 0
    """Seed of the training stream (procedural and reasoning-gym tasks)."""
    heldout_seed: int = 1234
    """Seed of the held-out set. Independent of ``seed`` so that every run of a comparison is
    evaluated on the same problems."""
    num_train: int | None = None
    """Training examples; None: 10000 for procedural tasks, 2000 for reasoning-gym, every
    non-held-out row of a file."""
    num_heldout: int = 200
    """Size of the held-out set (excluded from training)."""
    digits: int | None = None
    """Digits of each operand; None: the task's default (addition and multiplication 2, arithmetic
    1, countdown 1, i.e. numbers 1-9)."""
    terms: int | None = None
    """Operands of an ``arithmetic`` expression (default 3) or numbers given in ``countdown``
    (default 3)."""
    instruction: str | None = None
    """Text appended to each question on a new line; None: the task's default, "" for none (the
    default of file datasets)."""
    system: str | None = None
    """System message of every example; None leaves the chat template's default. A file's
    ``system_field`` takes precedence."""
    path: str | None = None
    """File dataset: ``.jsonl`` (one JSON object per line), ``.json`` (a list of objects),
    ``.parquet``, or a directory written by ``datasets.save_to_disk``."""
    heldout_path: str | None = None
    """File dataset: a separate held-out file; None carves ``num_heldout`` rows out of ``path``."""
    split: str = "train"
    """Split to read when ``path`` holds a ``DatasetDict``."""
    heldout_split: str | None = None
    """Split of ``path``'s ``DatasetDict`` to use as held-out set (instead of carving rows)."""
    prompt_field: str = "prompt"
    """Field holding the user message: a string, or a list of chat messages (``role``/``content``)
    with one user message and an optional system message. Dots reach nested fields (``a.b``)."""
    answer_field: str = "answer"
    """Field holding the reference answer (string or number); dots reach nested fields
    (``reward_model.ground_truth``)."""
    system_field: str | None = None
    """Field holding a per-row system message (string or null); None: no such field."""
    solution_field: str | None = "solution"
    """Field holding a worked reference solution (string or number; null or absent: none). Not read
    when it names the prompt, answer or system field; None: never read."""
    hints_field: str | None = "hints"
    """Field holding a hint ladder: a list of strings, weakest first (null or absent: none). None:
    never read."""
    options: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Config fields of a reasoning-gym generator (e.g. ``min_terms``: 2); for the graded tasks,
    ``levels``: the levels to use (``3`` or ``"0,3"``; default all)."""


@dataclass(frozen=True)
class Example:
    """One prompt with its reference answer.

    Attributes:
        prompt: the user message (question and answer-format instruction), before the chat template.
        answer: the reference answer as text (a number, an expression, a word...).
        system: the system message, or None for the chat template's default.
        meta: task-specific information for rewards (countdown numbers, reasoning-gym entry, ...).
        key: canonical key of the problem, used to keep the splits disjoint; empty means ``prompt``.
        solution: a worked reference solution (a full reply, ending with the answer line for the
            built-in tasks), or None when the task has none. Never part of the prompt.
        hints: a hint ladder, weakest first; the last is nearly the solution. Empty when the task
            has none. Never part of the prompt: guidance methods insert them.
    """

    prompt: str
    answer: str
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    solution: str | None = None
    hints: tuple[str, ...] = ()

    @property
    def canonical_key(self) -> str:
        """The key that identifies this problem (``key``, or the prompt when unset)."""
        return self.key or self.prompt

    def messages(self) -> list[dict[str, str]]:
        """Chat messages: the system message when present, then the user prompt."""
        out = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*out, {"role": "user", "content": self.prompt}]

    def to_sample(self, completion: str, num_tokens: int = 0, max_tokens: int = 0, truncated: bool = False) -> Sample:
        """The ``Sample`` a reward function sees for ``completion`` answering this example."""
        return Sample(
            prompt=self.prompt,
            completion=completion,
            answer=self.answer,
            num_tokens=num_tokens,
            max_tokens=max_tokens,
            truncated=truncated,
            meta=self.meta,
        )


def format_prompt(example: Example, tokenizer: Any) -> str:
    """The prompt text the policy sees: ``example`` through ``tokenizer``'s chat template.

    Args:
        example: the example.
        tokenizer: anything with ``apply_chat_template(messages, tokenize=False,
            add_generation_prompt=True)`` (a transformers tokenizer).

    Returns:
        The templated prompt, ending where the assistant's reply starts.
    """
    return tokenizer.apply_chat_template(example.messages(), tokenize=False, add_generation_prompt=True)


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from ``parts``, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Task:
    """Base of every task: splits, the default reward and the prompt instruction.

    Attributes:
        name: the task's name (its spec, e.g. ``addition`` or ``rg:leg_counting``).
        config: the config it was built from.
    """

    default_instruction = ANSWER_INSTRUCTION
    default_num_train = 10000

    def __init__(self, config: TaskConfig):
        self.config = config
        self.name = config.name

    @property
    def instruction(self) -> str:
        """The text appended to each question (the config's, else the task's default)."""
        return self.default_instruction if self.config.instruction is None else self.config.instruction

    @property
    def num_train(self) -> int:
        return self.default_num_train if self.config.num_train is None else self.config.num_train

    def make_example(
        self,
        question: str,
        answer: str,
        key: str,
        meta: dict[str, Any] | None = None,
        solution: str | None = None,
        hints: tuple[str, ...] = (),
    ) -> Example:
        """An example whose prompt is ``question`` followed by the instruction on a new line."""
        prompt = f"{question}\n{self.instruction}" if self.instruction else question
        meta = {"task": self.name, **(meta or {})}
        return Example(prompt, answer, self.config.system, meta, key, solution, tuple(hints))

    def train_examples(self, n: int | None = None) -> list[Example]:
        """The first ``n`` (default ``num_train``) training examples; never a held-out problem."""
        raise NotImplementedError

    def heldout_examples(self, n: int | None = None) -> list[Example]:
        """The first ``n`` (default all ``num_heldout``) held-out examples."""
        raise NotImplementedError

    def default_reward(self) -> tuple[tuple[PartConfig, float], ...]:
        """Registered reward parts and weights this task uses unless told otherwise.

        Correctness (``math_answer``, weight 1; ``number_only`` so that restating the question,
        ``Answer: 23 + 45``, is not graded as its value) plus a small ``format`` bonus (weight 0.1,
        for an explicitly marked number) that helps a small model learn to state its answer where
        the checker looks.
        """
        return ((MathAnswer(number_only=True), 1.0), (Format(numeric=True), 0.1))

    def reward(self) -> RewardRunner:
        """The default reward as a runner (see :func:`anypo.rewards.combine`)."""
        return combine(self.default_reward())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class ProceduralTask(Task):
    """A task generated from a seed: subclasses implement ``generate(rng) -> Example``."""

    default_digits = 1
    default_terms = 3

    @property
    def digits(self) -> int:
        """Digits of each operand: the config's, else the task's default."""
        return self.default_digits if self.config.digits is None else self.config.digits

    @property
    def terms(self) -> int:
        """Operands (numbers) per problem: the config's, else the task's default."""
        return self.default_terms if self.config.terms is None else self.config.terms

    def generate(self, rng: random.Random) -> Example:
        """One random problem; its ``key`` must identify the problem (not its wording)."""
        raise NotImplementedError

    def _draw(self, seed: int, n: int, keep: Callable[[Example], bool], unique: bool) -> list[Example]:
        rng = random.Random(stable_seed("anypo", self.name, seed))
        out: list[Example] = []
        seen: set[str] = set()
        attempts = 0
        max_attempts = 100 * n + 10_000
        while len(out) < n:
            attempts += 1
            if attempts > max_attempts:
                raise ValueError(
                    f"task {self.name!r} ({self.config}): found only {len(out)} of {n} problems in "
                    f"{max_attempts} draws; the problem space is too small (raise digits, lower num_heldout)"
                )
            ex = self.generate(rng)
            key = ex.canonical_key
            if not keep(ex) or (unique and key in seen):
                continue
            seen.add(key)
            out.append(ex)
        return out

    @functools.cached_property
    def _heldout(self) -> list[Example]:
        return self._draw(
            stable_seed("heldout", self.config.heldout_seed), self.config.num_heldout, lambda ex: True, True
        )

    @functools.cached_property
    def heldout_keys(self) -> frozenset[str]:
        """Canonical keys of the held-out set; the training stream never yields them."""
        return frozenset(ex.canonical_key for ex in self._heldout)

    def train_examples(self, n: int | None = None) -> list[Example]:
        """``n`` draws from the training stream (repeats allowed, held-out problems skipped)."""
        n = self.num_train if n is None else n
        banned = self.heldout_keys
        return self._draw(stable_seed("train", self.config.seed), n, lambda ex: ex.canonical_key not in banned, False)

    def heldout_examples(self, n: int | None = None) -> list[Example]:
        n = self.config.num_heldout if n is None else n
        if n > self.config.num_heldout:
            raise ValueError(f"asked for {n} held-out examples, the task has num_heldout={self.config.num_heldout}")
        return self._heldout[:n]
