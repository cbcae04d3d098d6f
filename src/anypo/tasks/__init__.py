"""Tasks: verifiable problems with reference answers, disjoint train / held-out splits, and the
reward each task uses by default.

``get_task("addition", digits=3)``, ``get_task("rg:leg_counting")``,
``get_task("data.jsonl", answer_field="solution")`` or ``get_task(TaskConfig(...))``; then
``task.train_examples()``, ``task.heldout_examples()``, ``task.reward()`` and
``format_prompt(example, tokenizer)``. See ``docs/tasks.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from anypo.tasks.arithmetic import AdditionTask, ArithmeticTask, MultiplicationTask
from anypo.tasks.base import (
    ANSWER_INSTRUCTION,
    EXPRESSION_INSTRUCTION,
    Example,
    ProceduralTask,
    Task,
    TaskConfig,
    format_prompt,
)
from anypo.tasks.continuation import PositiveContinuationTask
from anypo.tasks.countdown import CountdownTask
from anypo.tasks.data import DataError, FileTask, iter_rows, looks_like_path
from anypo.tasks.graded import GradedArithmeticTask, GradedCountdownTask, GradedTask, Level
from anypo.tasks.proxy import AdditionLengthProxyTask, AdditionProxyTask
from anypo.tasks.rgym import ReasoningGymTask, reasoning_gym_names

__all__ = [
    "ANSWER_INSTRUCTION",
    "EXPRESSION_INSTRUCTION",
    "TASKS",
    "AdditionProxyTask",
    "AdditionTask",
    "ArithmeticTask",
    "CountdownTask",
    "DataError",
    "Example",
    "FileTask",
    "GradedArithmeticTask",
    "GradedCountdownTask",
    "GradedTask",
    "Level",
    "MultiplicationTask",
    "PositiveContinuationTask",
    "ProceduralTask",
    "ReasoningGymTask",
    "Task",
    "TaskConfig",
    "format_prompt",
    "get_task",
    "iter_rows",
    "reasoning_gym_names",
    "task_names",
]

TASKS: dict[str, type[Task]] = {
    "addition": AdditionTask,
    "multiplication": MultiplicationTask,
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
    "graded_arithmetic": GradedArithmeticTask,
    "graded_countdown": GradedCountdownTask,
    "addition_proxy": AdditionProxyTask,
    "addition_length_proxy": AdditionLengthProxyTask,
    "positive_continuation": PositiveContinuationTask,
}
"""Built-in procedural tasks by name; add your own ``Task`` subclass here to make it a name."""
RG_PREFIXES = ("rg:", "reasoning_gym:")


def task_names() -> list[str]:
    """Names accepted by ``get_task`` besides ``rg:<generator>`` and dataset paths."""
    return sorted([*TASKS, "file"])


def get_task(spec: str | TaskConfig, **overrides: Any) -> Task:
    """Build a task.

    Args:
        spec: a task name (``addition``, ``rg:leg_counting``, ``file``, a dataset path) or a
            ``TaskConfig``.
        **overrides: ``TaskConfig`` fields to set (``seed=1``, ``digits=3``, ``answer_field=...``).

    Returns:
        The task.

    Raises:
        TypeError: an override is not a ``TaskConfig`` field.
        KeyError: the name is unknown (the error lists close names).
    """
    cfg = spec if isinstance(spec, TaskConfig) else TaskConfig(name=spec)
    fields = {f.name for f in dataclasses.fields(TaskConfig)}
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TypeError(f"unknown task option {key!r}{hint}; options: {', '.join(sorted(fields))}")
    cfg = dataclasses.replace(cfg, **overrides)
    name = cfg.name
    if name in TASKS:
        return TASKS[name](cfg)
    for prefix in RG_PREFIXES:
        if name.startswith(prefix):
            return ReasoningGymTask(cfg, name[len(prefix) :])
    if name == "file":
        return FileTask(cfg)
    if looks_like_path(name):
        return FileTask(dataclasses.replace(cfg, path=name))
    close = difflib.get_close_matches(name, task_names(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown task {name!r}.{hint} Known: {', '.join(task_names())}, rg:<generator>, or a dataset path")
