"""Preference data: pairs ``(prompt, chosen, rejected)`` from a user dataset or a built-in task.

Two sources, one result (:class:`PreferenceData`):

* **User datasets**: JSONL, JSON, parquet or a saved HF dataset directory (the readers of
  :mod:`anypo.tasks.data`), in either form TRL's preference format uses:

  - *plain*: ``{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}``;
  - *chat messages*: ``{"prompt": [{"role": "user", "content": "What is 2+2?"}],
    "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}``,
    or without a prompt field (TRL's *implicit prompt*): ``chosen`` and ``rejected`` are whole
    conversations whose shared leading messages are the prompt and whose last message is the
    assistant's answer.

  Field names are mapped with ``prompt_field`` / ``chosen_field`` / ``rejected_field`` (dots reach
  nested fields, as ``a.b``) and an optional per-row ``system_field``. Every row is validated when
  the data is loaded; a malformed row raises :class:`~anypo.tasks.data.DataError` naming the file,
  the row (1-based: the line of a JSONL file) and the field.

* **Built-in pairs** (``name="addition"`` or ``"multiplication"``): generated from the procedural
  task of that name, deterministically from ``seed``; no download. The chosen answer is a correct
  worked answer (``23 + 45 = 68.`` then ``Answer: 68``), the rejected one the same text with a wrong
  result (off by a random non-zero amount: a slip of a unit, a ten or a carry). The task's held-out
  problems give the held-out pairs and, for ``eval/pass@k``, the held-out prompts.

The prompt of a pair is a list of chat messages (the system message first when there is one); the
preference loop formats it with the tokenizer's chat template, as the online loop formats its
prompts. A response is the assistant's text; the loop appends the end-of-turn token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anypo.tasks.base import Example, Task, TaskConfig, stable_seed
from anypo.tasks.data import _MISSING, DataError, _get, iter_rows, looks_like_path

__all__ = [
    "BUILTIN_PAIRS",
    "PreferenceData",
    "PreferenceDataConfig",
    "PreferencePair",
    "builtin_pairs",
    "load_preference_data",
    "row_to_pair",
]

BUILTIN_PAIRS = ("addition", "multiplication")
"""Procedural tasks that give built-in preference pairs (the name of ``PreferenceDataConfig``)."""
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferenceDataConfig:
    """Which preference pairs to train and evaluate on."""

    name: str = "addition"
    """Built-in pairs (``addition``, ``multiplication``: generated from the task of that name), ``file``
    (uses ``path``), or a path to a ``.jsonl`` / ``.json`` / ``.parquet`` file or a saved HF dataset directory."""
    path: str | None = None
    """File dataset (with ``name="file"``)."""
    split: str = "train"
    """Split to read when the file holds a ``DatasetDict``."""
    heldout_path: str | None = None
    """A separate file of held-out pairs; None carves ``num_heldout`` pairs out of the training file."""
    heldout_split: str | None = None
    """Split of the ``DatasetDict`` to use as held-out pairs (instead of carving rows)."""
    num_train: int | None = None
    """Training pairs; None: 10000 built-in pairs, every non-held-out row of a file."""
    num_heldout: int = 32
    """Held-out pairs (excluded from training; built-in: the task's held-out problems)."""
    prompt_field: str = "prompt"
    """Field of the prompt: a string, or chat messages (``role`` / ``content``) ending with a user
    message. Missing in every row: chat-message ``chosen`` / ``rejected`` carry the prompt (TRL's implicit prompt)."""
    chosen_field: str = "chosen"
    """Field of the preferred response: a string, or one assistant message as a list
    (``[{"role": "assistant", "content": ...}]``), or a whole conversation (implicit prompt)."""
    rejected_field: str = "rejected"
    """Field of the dispreferred response, in the same form as the chosen one."""
    system_field: str | None = None
    """Field holding a per-row system message (string or null), replacing the prompt's own; None: no such field."""
    system: str | None = None
    """System message of every pair without one; None leaves the chat template's default."""
    seed: int = 0
    """Built-in pairs: seed of the training problems and of the wrong answers."""
    heldout_seed: int = 1234
    """Seed of the held-out set (built-in: the task's held-out problems; files: the carved rows)."""
    digits: int | None = None
    """Built-in pairs: digits of each operand (None: the task's default, 2)."""


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair.

    Attributes:
        prompt: chat messages (``{"role", "content"}`` dicts), the system message first when present,
            ending with the user message the responses answer.
        chosen: the preferred assistant response (text, without the end-of-turn token).
        rejected: the dispreferred assistant response.
        meta: the row's other fields, ``source`` and ``row`` (files) or the task's metadata (built-in).
        key: identifies the prompt (held-out carving removes every training pair with a held-out key).
    """

    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    def messages(self) -> list[dict[str, str]]:
        """The prompt's messages as a list (what ``apply_chat_template`` takes)."""
        return [dict(m) for m in self.prompt]


@dataclass
class PreferenceData:
    """Training and held-out pairs, and the task they came from (built-in pairs only).

    Attributes:
        train: training pairs, in order (the loop shuffles them per epoch).
        heldout: held-out pairs (never in ``train``).
        task: the procedural task of built-in pairs (its held-out examples give ``eval/pass@k``), else None.
        heldout_examples: the task's held-out examples (the prompts of ``heldout``), else empty.
    """

    train: list[PreferencePair]
    heldout: list[PreferencePair]
    task: Task | None = None
    heldout_examples: list[Example] = field(default_factory=list)


def load_preference_data(cfg: PreferenceDataConfig) -> PreferenceData:
    """Load (or generate) the pairs of ``cfg``.

    Raises:
        DataError: a malformed row (file, row and field named).
        FileNotFoundError: the dataset does not exist.
        KeyError: the name is neither a built-in set nor a dataset path.
        ValueError: no training pairs are left after the held-out carve-out.
    """
    if cfg.name in BUILTIN_PAIRS:
        return builtin_pairs(cfg)
    if cfg.name == "file" or looks_like_path(cfg.name):
        path = cfg.path if cfg.name == "file" else cfg.name
        if not path:
            raise ValueError(
                "preference data 'file' needs --data.path (a .jsonl, .json, .parquet file or a dataset dir)"
            )
        return _file_pairs(cfg, path)
    raise KeyError(
        f"unknown preference data {cfg.name!r}: give a built-in set ({', '.join(BUILTIN_PAIRS)}), 'file' with "
        "--data.path, or a dataset path (.jsonl, .json, .parquet or a saved dataset directory)"
    )


# ---- user datasets ----
def _file_pairs(cfg: PreferenceDataConfig, path: str) -> PreferenceData:
    rows = _load(cfg, path, cfg.split)
    if cfg.heldout_path or cfg.heldout_split:
        where = cfg.heldout_path or path
        heldout = _load(cfg, where, cfg.heldout_split or cfg.split)[: cfg.num_heldout]
    else:
        heldout = _carve(rows, cfg.num_heldout, cfg.heldout_seed)
    keys = {p.key for p in heldout}
    train = [p for p in rows if p.key not in keys]
    if cfg.num_train is not None:
        train = train[: cfg.num_train]
    if not train:
        raise ValueError(
            f"preference data {path}: no training pairs left after removing {len(heldout)} held-out pairs "
            f"(lower --data.num-heldout)"
        )
    return PreferenceData(train=train, heldout=heldout)


def _load(cfg: PreferenceDataConfig, path: str, split: str) -> list[PreferencePair]:
    return [row_to_pair(row, i, path, cfg) for i, row in iter_rows(path, split)]


def _carve(rows: list[PreferencePair], n: int, seed: int) -> list[PreferencePair]:
    """``n`` pairs with distinct prompts, chosen by a seeded shuffle, in file order."""
    order = list(range(len(rows)))
    random.Random(stable_seed("heldout-pairs", seed)).shuffle(order)
    chosen: dict[str, int] = {}
    for i in order:
        if len(chosen) == n:
            break
        chosen.setdefault(rows[i].key, i)
    return [rows[i] for i in sorted(chosen.values())]


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _messages(value: Any, path: str, row_no: int, name: str) -> list[dict[str, str]]:
    """Validated chat messages: dicts with a known ``role`` and string ``content``."""
    out = []
    for k, m in enumerate(value):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(path, row_no, name, f"message {k} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(path, row_no, name, f"message {k} has no string 'content' (got {type(content).__name__})")
        out.append({"role": role, "content": content})
    return out


def _prompt_messages(value: Any, path: str, row_no: int, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(path, row_no, name, "empty prompt")
        return [{"role": "user", "content": value}]
    if _is_messages(value):
        msgs = _messages(value, path, row_no, name)
        if msgs[-1]["role"] != "user":
            raise DataError(path, row_no, name, "chat messages of a prompt must end with a user message")
        return msgs
    raise DataError(path, row_no, name, f"expected a string or chat messages, got {type(value).__name__}")


def _response(value: Any, path: str, row_no: int, name: str) -> str:
    """The assistant text of a response given as a string or as one assistant message."""
    if isinstance(value, str):
        text = value
    elif _is_messages(value):
        msgs = _messages(value, path, row_no, name)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataError(
                path, row_no, name, "a response given as chat messages must be exactly one assistant message"
            )
        text = msgs[0]["content"]
    else:
        raise DataError(path, row_no, name, f"expected a string or one assistant message, got {type(value).__name__}")
    if not text.strip():
        raise DataError(path, row_no, name, "empty response")
    return text


def _split_implicit(
    chosen: Any, rejected: Any, path: str, row_no: int, cfg: PreferenceDataConfig
) -> tuple[list[dict[str, str]], str, str]:
    """TRL's implicit prompt: the shared leading messages of two conversations, and each last reply."""
    c = _messages(chosen, path, row_no, cfg.chosen_field)
    r = _messages(rejected, path, row_no, cfg.rejected_field)
    for name, conv in ((cfg.chosen_field, c), (cfg.rejected_field, r)):
        if conv[-1]["role"] != "assistant":
            raise DataError(path, row_no, name, "an implicit-prompt conversation must end with the assistant's reply")
    if c[:-1] != r[:-1]:
        raise DataError(
            path,
            row_no,
            cfg.rejected_field,
            f"the conversation before the last reply differs from {cfg.chosen_field!r}'s: with no "
            f"{cfg.prompt_field!r} field the two must share every message but the last",
        )
    prompt = c[:-1]
    if not prompt or prompt[-1]["role"] != "user":
        raise DataError(path, row_no, cfg.chosen_field, "the shared messages (the prompt) must end with a user message")
    texts = []
    for name, conv in ((cfg.chosen_field, c), (cfg.rejected_field, r)):
        if not conv[-1]["content"].strip():
            raise DataError(path, row_no, name, "empty response")
        texts.append(conv[-1]["content"])
    return prompt, texts[0], texts[1]


def row_to_pair(row: Any, row_no: int, path: str | Path, cfg: PreferenceDataConfig) -> PreferencePair:
    """Validate one row and turn it into a pair (see :class:`PreferenceDataConfig` for the mapping)."""
    path = str(path)
    if not isinstance(row, dict):
        raise DataError(path, row_no, None, f"expected an object with fields, got {type(row).__name__}")
    fields = ", ".join(map(str, row))
    chosen, rejected = _get(row, cfg.chosen_field), _get(row, cfg.rejected_field)
    for name, value in ((cfg.chosen_field, chosen), (cfg.rejected_field, rejected)):
        if value is _MISSING:
            raise DataError(path, row_no, name, f"missing (fields: {fields})")
    prompt_value = _get(row, cfg.prompt_field)
    if prompt_value is _MISSING:
        if not (_is_messages(chosen) and _is_messages(rejected)):
            raise DataError(
                path,
                row_no,
                cfg.prompt_field,
                f"missing (fields: {fields}); without a prompt field, {cfg.chosen_field!r} and "
                f"{cfg.rejected_field!r} must be chat conversations that share the prompt messages",
            )
        prompt, chosen_text, rejected_text = _split_implicit(chosen, rejected, path, row_no, cfg)
    else:
        prompt = _prompt_messages(prompt_value, path, row_no, cfg.prompt_field)
        chosen_text = _response(chosen, path, row_no, cfg.chosen_field)
        rejected_text = _response(rejected, path, row_no, cfg.rejected_field)
    system = next((m["content"] for m in prompt if m["role"] == "system"), None)
    if cfg.system_field is not None:
        value = _get(row, cfg.system_field)
        if value is _MISSING:
            raise DataError(path, row_no, cfg.system_field, "missing (use null for no system message)")
        if value is not None and not isinstance(value, str):
            raise DataError(path, row_no, cfg.system_field, f"expected a string or null, got {type(value).__name__}")
        prompt = [m for m in prompt if m["role"] != "system"]
        system = value
    elif system is None:
        system = cfg.system
    body = [m for m in prompt if m["role"] != "system"]
    messages = ([{"role": "system", "content": system}] if system is not None else []) + body
    mapped = {f.split(".")[0] for f in (cfg.prompt_field, cfg.chosen_field, cfg.rejected_field, cfg.system_field) if f}
    meta = {k: v for k, v in row.items() if k not in mapped}
    meta.update(source=path, row=row_no)
    key = "\n".join(f"{m['role']}: {m['content']}" for m in body)
    return PreferencePair(tuple(messages), chosen_text, rejected_text, meta, key)


# ---- built-in pairs ----
def _wrong(value: int, rng: random.Random) -> int:
    """A wrong result near ``value``: off by a unit (1-9), a ten, or a carry slip, never negative."""
    kind = rng.random()
    if kind < 0.4:
        delta = rng.randint(1, 9)
    elif kind < 0.8:
        delta = 10 * rng.randint(1, 3)
    else:
        delta = 1 if value % 10 else 11  # a dropped or doubled carry
    return value + delta if rng.random() < 0.5 or value - delta < 0 else value - delta


def _pair_of(example: Example, symbol: str, seed: int) -> PreferencePair:
    """A correct worked answer against the same answer with a wrong result (deterministic per problem)."""
    a, b = example.meta["operands"]
    right = int(example.answer)
    wrong = _wrong(right, random.Random(stable_seed("pairs", seed, example.canonical_key)))
    chosen = f"{a} {symbol} {b} = {right}.\nAnswer: {right}"
    rejected = f"{a} {symbol} {b} = {wrong}.\nAnswer: {wrong}"
    return PreferencePair(tuple(example.messages()), chosen, rejected, dict(example.meta), example.canonical_key)


def builtin_pairs(cfg: PreferenceDataConfig) -> PreferenceData:
    """Pairs from the procedural task ``cfg.name`` (``addition`` or ``multiplication``), no download.

    Training pairs come from the task's training stream (``seed``), held-out pairs from its
    held-out problems (``heldout_seed``), so the two never share a problem.
    """
    from anypo.tasks import get_task

    task = get_task(
        TaskConfig(
            name=cfg.name,
            seed=cfg.seed,
            heldout_seed=cfg.heldout_seed,
            num_train=cfg.num_train,
            num_heldout=cfg.num_heldout,
            digits=cfg.digits,
            system=cfg.system,
        )
    )
    symbol = task.symbol
    heldout_examples = task.heldout_examples()
    train = [_pair_of(ex, symbol, cfg.seed) for ex in task.train_examples()]
    heldout = [_pair_of(ex, symbol, cfg.seed) for ex in heldout_examples]
    return PreferenceData(train=train, heldout=heldout, task=task, heldout_examples=heldout_examples)
