"""Run directories: resolved config, metrics.jsonl, samples, plots and a short README."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Dataclasses (with the registered part type recorded), tuples and paths as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"_type": type(obj).__name__}
        out.update({f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
        return out
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2))
    os.replace(tmp, path)


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """``<out_dir>/<name>-<YYYYmmdd-HHMMSS>``, made unique if two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    path.mkdir(parents=True)
    return path


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a crash loses at most the current line."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a")  # noqa: SIM115 - kept open for the run

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(to_jsonable(record)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _complete_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` of each JSON line of ``path`` up to the first that does not parse.

    ``JsonlWriter`` writes whole lines, so only the last one can be cut (a process killed mid-write);
    what came before it is intact.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                out.append((line, json.loads(line)))
            except json.JSONDecodeError:
                break
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log (empty when missing), without a line cut by a killed writer."""
    return [record for _, record in _complete_lines(path)]


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the lines logged after ``step`` (a resumed run redoes them) and a line cut by a kill."""
    if path.exists():
        keep = [line for line, record in _complete_lines(path) if record.get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in keep))


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux -> GB


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and its flags from Linux's /proc/cpuinfo (``("", [])`` where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", []
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return model, flags
