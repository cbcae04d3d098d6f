"""The memory-saving optimizers (``--optimizer adamw8bit`` / ``adafactor``) in the online loop: `anypo train
grpo --smoke` runs end to end, its checkpoint holds the optimizer's own state, and an interrupted run resumes
exactly like an uninterrupted one (the optimizer state round-trips through the checkpoint)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anypo import checkpoint, cli
from anypo.config import from_jsonable
from anypo.models import load_model
from anypo.train import train
from tiny_runs import TOY, ctrl_c_in_rollout, interrupted_then_resumed, metric_rows

STATE_KEYS = {"adamw8bit": {"m_code", "v_code", "m_scale", "v_scale"}, "adafactor": {"row_var", "col_var"}}
"""A key that each optimizer's state has for some matrix of the tiny model."""


@pytest.mark.parametrize("optimizer", ["adamw8bit", "adafactor"])
def test_smoke_run_with_optimizer_resumes_exactly(optimizer, tmp_path, monkeypatch):
    """Run A: `anypo train grpo --smoke --optimizer X` (2 steps), uninterrupted. Run B: the same config,
    Ctrl-C at the start of step 2, resumed from the step-1 checkpoint. B's step 2 equals A's and the final
    weights are identical: the optimizer's state (8-bit codes and scales, or factored moments) was saved and
    restored exactly."""
    args = ["train", "grpo", "--smoke", "--rewards", f"{TOY}:char_sum", "--optimizer", optimizer]
    assert cli.main([*args, "--out-dir", str(tmp_path / "a")]) == 0
    (run_a,) = (tmp_path / "a").iterdir()
    cfg = from_jsonable(json.loads((run_a / "config.json").read_text()))
    assert cfg.optimizer == optimizer
    _, state = checkpoint.load(checkpoint.latest(run_a))
    keys = set().union(*(s.keys() for s in state["optimizer"]["state"].values()))
    assert STATE_KEYS[optimizer] <= keys, keys

    ctrl_c_in_rollout(monkeypatch, step=2)
    run_b = interrupted_then_resumed(
        train, dataclasses.replace(cfg, out_dir=str(tmp_path / "b")), saved_step=1, undo=monkeypatch.undo
    )
    ra, rb = metric_rows(run_a), metric_rows(run_b)
    assert sorted(rb) == [1, 2]
    for k in ("reward/mean", "policy/loss", "train/grad_norm"):
        assert ra[2][k] == rb[2][k], k
    fa = load_file(str(Path(run_a) / "final" / "model.safetensors"))
    fb = load_file(str(Path(run_b) / "final" / "model.safetensors"))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    init = load_model("tiny", seed=cfg.seed).state_dict()
    assert any(not torch.equal(v, init[k]) for k, v in fa.items() if k in init), "no parameter changed"
