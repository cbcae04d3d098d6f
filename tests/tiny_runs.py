"""Shared by the e2e and distributed tests: the tiny runs they train, their metrics by step, and an
interrupted run resumed from its checkpoint.

Importable as ``tiny_runs`` from every test folder (pytest puts ``tests/``, the folder of the root
conftest.py, on ``sys.path``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from anypo import checkpoint
from anypo.config import TrainConfig
from anypo.engines.base import SamplingConfig
from anypo.models import ModelConfig
from anypo.tasks import TaskConfig

TOY = str(Path(__file__).parent / "e2e" / "toy_rewards.py")
"""The toy reward functions (``f"{TOY}:char_sum"``: a reward that varies per sample)."""


def tiny_run(cls: type, tmp_path, **kw) -> Any:
    """A config of any loop (``TrainConfig``, ``PrefTrainConfig``, ...) for a 2-step run of the tiny
    model into ``tmp_path``: lr 1e-3, no evaluation, a checkpoint every step, no progress bar; ``kw``
    sets or overrides any field."""
    base = {
        "model": ModelConfig(name="tiny"),
        "steps": 2,
        "lr": 1e-3,
        "eval_every": 0,
        "save_every": 1,
        "progress": False,
        "out_dir": str(tmp_path),
    }
    return cls(**{**base, **kw})


def tiny_config(tmp_path, **kw) -> TrainConfig:
    """The online loop's tiny run: 2 prompts x 4 samples, 8 new tokens, a reward that varies per sample."""
    base = {
        "task": TaskConfig(name="addition", num_train=64, num_heldout=8),
        "sampling": SamplingConfig(max_new_tokens=8),
        "rewards": (f"{TOY}:char_sum",),
        "prompts_per_step": 2,
        "samples_per_prompt": 4,
        "micro_batch_size": 4,
        "log_entropy": True,
    }
    return tiny_run(TrainConfig, tmp_path, **{**base, **kw})


def metric_rows(run: Path) -> dict[int, dict]:
    """The rows of ``run/metrics.jsonl`` by step."""
    return {r["step"]: r for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines())}


def ctrl_c_in_rollout(monkeypatch, step: int = 3, before=None) -> None:
    """Make the online loop raise KeyboardInterrupt once, at the start of step ``step``'s rollout (after
    ``before(context)`` where given, e.g. a sampler draw that moves its state first)."""
    from anypo.train import Context

    real, fired = Context.rollout, []

    def rollout(self, s):
        if s == step and not fired:
            fired.append(s)
            if before is not None:
                before(self)
            raise KeyboardInterrupt
        return real(self, s)

    monkeypatch.setattr(Context, "rollout", rollout)


def interrupted_then_resumed(train, cfg, saved_step: int = 2, undo=None) -> Path:
    """Run ``cfg`` with ``train`` until the KeyboardInterrupt the caller arranged; check the run logged
    and checkpointed steps 1 .. ``saved_step`` only; call ``undo`` (e.g. ``monkeypatch.undo``) and
    resume the run to its end. Returns its run directory."""
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    (run,) = [p for p in Path(cfg.out_dir).iterdir() if p.is_dir()]
    assert checkpoint.latest(run).name == f"step_{saved_step:06d}"
    assert sorted(metric_rows(run)) == list(range(1, saved_step + 1))
    if undo is not None:
        undo()
    train(cfg, resume=run)
    return run
