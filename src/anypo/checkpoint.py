"""Atomic, verifiable checkpoints: a crash never loses what was already trained.

Layout: ``<run>/checkpoints/step_000010/`` with ``policy.safetensors`` (or the LoRA adapter weights),
``trainer.pt`` (optimizer, scheduler, sampler, RNG states, step) and ``manifest.json`` (SHA-256 of
every file). A checkpoint is written into a temporary directory and renamed into place, then
``latest`` (a one-line file) is replaced atomically; the previous checkpoint stays valid until then.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupted."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights that training changes: all of them, or only the LoRA adapters."""
    from anypo.models import is_lora

    sd = model.state_dict()
    if is_lora(model):
        sd = {k: v for k, v in sd.items() if "lora_" in k}
    # safetensors refuses tensors that share memory (tied embeddings): keep one name of each
    seen: dict[int, str] = {}
    out = {}
    for k, v in sd.items():
        ptr = v.data_ptr()
        if ptr in seen:
            continue
        seen[ptr] = k
        out[k] = v.detach().contiguous().cpu()
    return out


def save(
    run_dir: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically and keep the ``keep`` newest ones."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, sd in tensors.items():
            save_file(sd, str(tmp / f"{name}.safetensors"))
        torch.save(state, tmp / "trainer.pt")
        manifest = {"step": step, "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir())}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _fsync_dir(tmp)
    except Exception as e:  # a full disk surfaces as OSError, a safetensors error or a torch.save RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint only holds disk space
        raise CheckpointError(_write_failure(run_dir, root, step, e)) from e
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, root / "latest")
    for old in sorted(root.glob("step_*"))[: -max(keep, 1)]:  # the newest (just written) always stays
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_failure(run_dir: Path, root: Path, step: int, err: Exception) -> str:
    """One line: what failed, the free space of the disk, and that the previous checkpoint still resumes."""
    free = shutil.disk_usage(root).free / 1e9
    prev = latest(run_dir)
    keep = (
        f"the previous checkpoint {prev.name} is intact: free space, then `anypo train --resume {run_dir}`"
        if prev is not None
        else "no earlier checkpoint exists"
    )
    return f"could not write checkpoint step {step} to {root} ({err}; {free:.2f} GB free on that disk); {keep}"


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def latest(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    return run_dir / "checkpoints" / pointer.read_text().strip()


def load(ckpt: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Verify ``ckpt`` against its manifest and load it; raise CheckpointError naming the bad file."""
    manifest_path = ckpt / "manifest.json"
    if not manifest_path.exists():
        raise CheckpointError(
            f"{ckpt} has no manifest.json: the checkpoint is incomplete; resume from an earlier step_* directory"
        )
    manifest = json.loads(manifest_path.read_text())
    for name, digest in manifest["files"].items():
        path = ckpt / name
        if not path.exists():
            raise CheckpointError(f"{path} is missing from the checkpoint")
        if _sha256(path) != digest:
            raise CheckpointError(
                f"{path} is corrupted (SHA-256 differs from manifest.json); delete {ckpt} to resume from the previous checkpoint"
            )
    tensors = {p.stem: load_file(str(p)) for p in ckpt.glob("*.safetensors")}
    state = torch.load(ckpt / "trainer.pt", weights_only=False)
    return tensors, state


def optimizer_state_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A torch optimizer state dict keyed by parameter position (``optimizer.state_dict()``) rewritten
    with parameter names, the form ``torch.distributed.checkpoint.state_dict`` reads and writes for
    any model, sharded or not. ``names``: the names of the optimizer's parameters, in its order."""
    return {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def optimizer_state_by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`optimizer_state_by_name` for an optimizer over the parameters ``names`` (in
    its order); a state already keyed by position is returned as it is."""
    if all(isinstance(k, int) for k in state["state"]) and all(
        isinstance(p, int) for g in state["param_groups"] for p in g["params"]
    ):
        return state
    index = {n: i for i, n in enumerate(names)}
    missing = [n for g in state["param_groups"] for n in g["params"] if n not in index]
    if missing:
        raise CheckpointError(
            f"the checkpoint's optimizer state names parameters this model does not train: {missing[:3]} "
            "(a different model or LoRA setting than the run's)"
        )
    return {
        "state": {index[n]: s for n, s in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }
