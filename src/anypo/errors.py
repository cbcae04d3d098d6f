"""User errors: mistakes in what was asked for (config, data, model, task), reported as one clean message.

The ``anypo`` command prints a user error as ``anypo: error: <message>`` on stderr and exits with 2,
without a traceback (``--debug`` shows it). Anything else is a bug or a failure of a library and keeps
its traceback (exit 1).

A user error is a :class:`UserError`, or a ``ValueError`` / ``KeyError`` / ``FileNotFoundError``
raised while loading what the user named: the innermost anypo frame of its traceback is in the
config, validation, model, task, preset or reward-spec loading code (:data:`LOADING`), or in a
config's ``__post_init__``. The same types raised from the training loop, the parts' maths or
torch internals are not: a ``KeyError`` there is a bug, and its traceback is what a report needs.
"""

from __future__ import annotations

from types import TracebackType

__all__ = ["LOADING", "UserError", "is_user_error", "message"]


class UserError(ValueError):
    """A mistake in the user's request, with what to change. ``problems`` lists each one.

    Args:
        problems: one message, or several (shown one per line).
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


LOADING: tuple[str, ...] = (
    "anypo.config",
    "anypo.validate",
    "anypo.errors",
    "anypo.models",
    "anypo.registry",
    "anypo.tasks",
    "anypo.algorithms",
    "anypo.engines",  # the package itself (make_engine), not engines.hf's generation
    "anypo.rewards.combine",  # reward specs: 'module:function', 'file.py:function', names
    "anypo.trainer_setup:tokenize_prompts",
    "anypo.trainer_setup:parse_reward_specs",
    "anypo.trainer_setup:make_reward",
    "anypo.trainer_setup:make_verifier",
)
"""Where user input is loaded: ``module`` (a package name covers its submodules unless it is
``anypo.engines``) or ``module:function``. ``anypo.cli`` is not one: an exception whose innermost
anypo frame is the CLI came out of code the CLI called (a training loop, a user's function), not
from the CLI's own parsing, which reports its errors itself."""

_TYPES = (ValueError, KeyError, FileNotFoundError)


def _innermost_anypo_frame(tb: TracebackType | None) -> tuple[str, str] | None:
    found = None
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "anypo" or module.startswith("anypo."):
            found = (module, tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return found


def _is_loading(module: str, function: str) -> bool:
    if function == "__post_init__":  # a config checking its own fields
        return True
    for entry in LOADING:
        where, _, fn = entry.partition(":")
        if fn:
            if module == where and function == fn:
                return True
        elif module == where or (where != "anypo.engines" and module.startswith(where + ".")):
            return True
    return False


def is_user_error(exc: BaseException) -> bool:
    """True when ``exc`` is a mistake of the user's (print its message) rather than a bug (show the traceback)."""
    if isinstance(exc, UserError):
        return True
    if not isinstance(exc, _TYPES):
        return False
    where = _innermost_anypo_frame(exc.__traceback__)
    return where is not None and _is_loading(*where)


def message(exc: BaseException) -> str:
    """The text of a user error (a ``KeyError``'s message without the quotes ``str`` adds)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__
