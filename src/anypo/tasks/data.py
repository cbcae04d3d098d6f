"""User datasets: JSONL, JSON, parquet or a saved HF dataset, with a field mapping. No network.

Every row is validated when the task is built; a malformed row raises :class:`DataError` naming
the file, the row (1-based: the line of a JSONL file, the record of other formats) and the field.
Optional ``solution`` (a worked reference solution: string or number) and ``hints`` (a hint ladder:
a list of strings, weakest first) fields become ``Example.solution`` and ``Example.hints``; their
names are mapped by ``solution_field`` / ``hints_field``. Fields not mapped to the prompt, answer,
system, solution or hints go to ``Example.meta`` (a custom reward can read them there).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anypo.rewards import MathAnswer
from anypo.tasks.base import Example, Task, TaskConfig, stable_seed
from anypo.types import PartConfig

__all__ = ["DataError", "FileTask", "iter_rows", "looks_like_path", "row_to_example"]

_MISSING = object()
_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """A malformed row of a user dataset.

    Attributes:
        path: the file.
        row: 1-based row number (the line number of a JSONL file).
        field: the field at fault, or None when the whole row is (bad JSON).
    """

    def __init__(self, path: str | Path, row: int, field: str | None, problem: str):
        self.path, self.row, self.field = str(path), row, field
        where = f"field {field!r}: " if field is not None else ""
        super().__init__(f"{path}, row {row}: {where}{problem}")


def looks_like_path(name: str) -> bool:
    """True when a task name designates a dataset file or directory."""
    return name.endswith(_SUFFIXES) or "/" in name or Path(name).is_dir()


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline) are not rows
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, line_no, None, f"invalid JSON ({e.msg} at column {e.colno})") from None


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"invalid JSON ({e.msg}); a .json file holds a list of objects") from None
    if not isinstance(data, list):
        raise DataError(path, 1, None, f"a .json dataset must be a list of objects, got {type(data).__name__}")
    yield from enumerate(data, start=1)


def _iter_hf(path: Path, split: str) -> Iterator[tuple[int, Any]]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise KeyError(f"{path}: no split {split!r}; splits: {', '.join(loaded)}")
        loaded = loaded[split]
    yield from enumerate(loaded, start=1)


def iter_rows(path: str | Path, split: str = "train") -> Iterator[tuple[int, Any]]:
    """``(row_number, row)`` of a dataset file, row numbers 1-based.

    Args:
        path: ``.jsonl``, ``.json``, ``.parquet`` or a directory saved with ``save_to_disk``.
        split: split of a saved ``DatasetDict``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: a JSONL line is not valid JSON.
        ValueError: the format is not supported.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.is_dir():
        return _iter_hf(path, split)
    if path.suffix == ".jsonl":
        return _iter_jsonl(path)
    if path.suffix == ".json":
        return _iter_json(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return enumerate(pq.read_table(path).to_pylist(), start=1)
    raise ValueError(f"dataset {path}: unsupported format; use .jsonl, .json, .parquet or a save_to_disk directory")


def _get(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _read_prompt(value: Any, path: Path | str, row_no: int, name: str) -> tuple[str, str | None]:
    """``(user message, system message)`` of a prompt given as text or as chat messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(path, row_no, name, "empty prompt")
        return value, None
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        users = [m["content"] for m in value if m["role"] == "user"]
        systems = [m["content"] for m in value if m["role"] == "system"]
        if len(users) != 1 or len(users) + len(systems) != len(value) or not isinstance(users[0], str):
            raise DataError(path, row_no, name, "chat messages must be one user message and an optional system message")
        return users[0], systems[0] if systems else None
    raise DataError(path, row_no, name, f"expected a string or chat messages, got {type(value).__name__}")


def row_to_example(row: Any, row_no: int, path: Path | str, cfg: TaskConfig, instruction: str) -> Example:
    """Validate one row and turn it into an example (see ``TaskConfig`` for the field mapping)."""
    if not isinstance(row, dict):
        raise DataError(path, row_no, None, f"expected an object with fields, got {type(row).__name__}")
    prompt_value = _get(row, cfg.prompt_field)
    if prompt_value is _MISSING:
        raise DataError(path, row_no, cfg.prompt_field, f"missing (fields: {', '.join(map(str, row))})")
    prompt, system = _read_prompt(prompt_value, path, row_no, cfg.prompt_field)
    answer = _get(row, cfg.answer_field)
    if answer is _MISSING:
        raise DataError(path, row_no, cfg.answer_field, f"missing (fields: {', '.join(map(str, row))})")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(path, row_no, cfg.answer_field, f"expected a string or number, got {type(answer).__name__}")
    if cfg.system_field is not None:
        value = _get(row, cfg.system_field)
        if value is _MISSING:
            raise DataError(path, row_no, cfg.system_field, "missing (use null for no system message)")
        if value is not None and not isinstance(value, str):
            raise DataError(path, row_no, cfg.system_field, f"expected a string or null, got {type(value).__name__}")
        system = value
    if system is None:
        system = cfg.system
    solution_field, hints_field = _guidance_fields(cfg)
    solution = _read_solution(row, solution_field, path, row_no)
    hints = _read_hints(row, hints_field, path, row_no)
    fields = (cfg.prompt_field, cfg.answer_field, cfg.system_field, solution_field, hints_field)
    mapped = {f.split(".")[0] for f in fields if f}
    meta = {k: v for k, v in row.items() if k not in mapped}
    meta.update(source=str(path), row=row_no)
    text = f"{prompt}\n{instruction}" if instruction else prompt
    return Example(text, str(answer), system, meta, key=prompt, solution=solution, hints=hints)


def _guidance_fields(cfg: TaskConfig) -> tuple[str | None, str | None]:
    """``(solution_field, hints_field)`` to read: None for unset ones and for one that names the
    prompt, answer or system field (``answer_field="solution"`` keeps ``solution`` as the answer)."""
    taken = {cfg.prompt_field, cfg.answer_field, cfg.system_field}
    solution = cfg.solution_field if cfg.solution_field and cfg.solution_field not in taken else None
    hints = cfg.hints_field if cfg.hints_field and cfg.hints_field not in taken else None
    return solution, hints


def _read_solution(row: dict[str, Any], name: str | None, path: Path | str, row_no: int) -> str | None:
    """The row's worked solution: a non-empty string or a number; absent or null: None."""
    value = _MISSING if name is None else _get(row, name)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(
            path, row_no, name, f"expected a string (a worked solution) or null, got {type(value).__name__}"
        )
    if isinstance(value, str) and not value.strip():
        raise DataError(path, row_no, name, "empty solution (use null or leave the field out for none)")
    return str(value)


def _read_hints(row: dict[str, Any], name: str | None, path: Path | str, row_no: int) -> tuple[str, ...]:
    """The row's hint ladder: a list of non-empty strings, weakest first; absent or null: ()."""
    value = _MISSING if name is None else _get(row, name)
    if value is _MISSING or value is None:
        return ()
    if isinstance(value, str):
        raise DataError(path, row_no, name, "expected a list of strings, got a single string (wrap it in a list)")
    if not isinstance(value, (list, tuple)):
        raise DataError(
            path, row_no, name, f"expected a list of strings (weakest hint first), got {type(value).__name__}"
        )
    for i, hint in enumerate(value, start=1):
        if not isinstance(hint, str):
            raise DataError(path, row_no, name, f"hint {i} is not a string (got {type(hint).__name__})")
        if not hint.strip():
            raise DataError(path, row_no, name, f"hint {i} is empty")
    return tuple(value)


class FileTask(Task):
    """Examples from a user dataset (``config.path``); held-out rows are ``heldout_path``'s, the
    ``heldout_split`` of a ``DatasetDict``, or ``num_heldout`` rows drawn with ``heldout_seed``.
    Training rows whose prompt equals a held-out prompt are dropped. Rows are read eagerly, so a
    malformed row fails when the task is built."""

    default_instruction = ""

    def __init__(self, config: TaskConfig):
        super().__init__(config)
        if not config.path:
            raise ValueError("a file task needs config.path (a .jsonl, .json, .parquet file or a dataset directory)")
        rows = self._load(config.path, config.split)
        if config.heldout_path or config.heldout_split:
            where = config.heldout_path or config.path
            heldout = self._load(where, config.heldout_split or config.split)[: config.num_heldout]
        else:
            heldout = self._carve(rows)
        self._check_guidance_fields(rows + heldout)
        keys = {ex.canonical_key for ex in heldout}
        self._heldout = heldout
        self._train = [ex for ex in rows if ex.canonical_key not in keys]
        if not self._train:
            raise ValueError(
                f"dataset {config.path}: no training rows left after removing {len(heldout)} held-out rows"
            )

    def _check_guidance_fields(self, examples: list[Example]) -> None:
        """A solution / hints field renamed from its default must be found in some row (a typo
        would otherwise silently give no solutions)."""
        solution_field, hints_field = _guidance_fields(self.config)
        defaults = {f.name: f.default for f in dataclasses.fields(TaskConfig)}
        if solution_field not in (None, defaults["solution_field"]) and all(ex.solution is None for ex in examples):
            raise ValueError(
                f"dataset {self.config.path}: no row has solution_field {solution_field!r}; fix the name or set it to None"
            )
        if hints_field not in (None, defaults["hints_field"]) and all(not ex.hints for ex in examples):
            raise ValueError(
                f"dataset {self.config.path}: no row has hints_field {hints_field!r}; fix the name or set it to None"
            )

    def _load(self, path: str, split: str) -> list[Example]:
        return [row_to_example(row, i, path, self.config, self.instruction) for i, row in iter_rows(path, split)]

    def _carve(self, rows: list[Example]) -> list[Example]:
        """``num_heldout`` rows with distinct prompts, chosen by a ``heldout_seed`` shuffle."""
        order = list(range(len(rows)))
        random.Random(stable_seed("heldout", self.config.heldout_seed)).shuffle(order)
        chosen: dict[str, int] = {}
        for i in order:
            if len(chosen) == self.config.num_heldout:
                break
            chosen.setdefault(rows[i].canonical_key, i)
        return [rows[i] for i in sorted(chosen.values())]

    @property
    def num_train(self) -> int:
        return len(self._train) if self.config.num_train is None else self.config.num_train

    def train_examples(self, n: int | None = None) -> list[Example]:
        """The first ``n`` training rows in file order (all of them when fewer)."""
        return self._train[: self.num_train if n is None else n]

    def heldout_examples(self, n: int | None = None) -> list[Example]:
        return self._heldout[: len(self._heldout) if n is None else n]

    def default_reward(self) -> tuple[tuple[PartConfig, float], ...]:
        """``math_answer`` only: user prompts carry their own answer-format instructions."""
        return ((MathAnswer(), 1.0),)
