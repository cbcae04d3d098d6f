"""One strict registry per plugin kind: ``register(name, config=Cls)``, ``get(name)``, ``names()``.

Registries are filled by explicit imports in each kind's package ``__init__``; ``get(kind, name)``
imports that package first, so ``grep 'register("rloo"'`` finds every entry.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

KIND_MODULES = {
    "advantage": "anypo.advantages",
    "policy_loss": "anypo.losses",
    "value_loss": "anypo.losses",
    "preference_loss": "anypo.losses",
    "regularizer": "anypo.regularizers",
    "sampler": "anypo.samplers",
    "rollout": "anypo.rollout",
    "reward": "anypo.rewards",
}


class Registry:
    """Name -> (function or class, config class) for one kind of part."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[Any, type]] = {}
        self._by_config: dict[type, str] = {}

    def register(self, name: str, *, config: type) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if config in self._by_config:
                raise ValueError(f"config {config.__name__} already registered as {self._by_config[config]!r}")
            self._entries[name] = (obj, config)
            self._by_config[config] = name
            return obj

        return deco

    def get(self, name: str) -> tuple[Any, type]:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def name_of(self, config: Any) -> str:
        """The registered name of a config instance (or class)."""
        cls = config if isinstance(config, type) else type(config)
        if cls not in self._by_config:
            raise KeyError(f"{cls.__name__} is not a registered {self.kind} config")
        return self._by_config[cls]

    def fn_for(self, config: Any) -> Any:
        """The function (or class) registered with this config's class."""
        return self._entries[self.name_of(config)][0]

    def names(self) -> list[str]:
        return sorted(self._entries)


REGISTRIES: dict[str, Registry] = {kind: Registry(kind) for kind in KIND_MODULES}


def _load(kind: str) -> Registry:
    if kind not in REGISTRIES:
        close = difflib.get_close_matches(kind, REGISTRIES, n=3)
        raise KeyError(
            f"unknown kind {kind!r}; kinds: {', '.join(REGISTRIES)}" + (f" (did you mean {close[0]}?)" if close else "")
        )
    importlib.import_module(KIND_MODULES[kind])
    return REGISTRIES[kind]


def get(kind: str, name: str) -> tuple[Any, type]:
    """``(function_or_class, ConfigClass)`` registered as ``name`` for ``kind``."""
    return _load(kind).get(name)


def names(kind: str) -> list[str]:
    """Registered names of ``kind``, sorted."""
    return _load(kind).names()


def registry(kind: str) -> Registry:
    """The filled registry of ``kind``."""
    return _load(kind)
