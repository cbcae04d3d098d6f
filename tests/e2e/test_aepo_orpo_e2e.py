"""AEPO's controller and ORPO's base samples in the loop: the parts act (rows spliced, penalties applied)
and an interrupted run resumes exactly like an uninterrupted one (AEPO's entropy statistic in the rollout
part's state; ORPO's discriminator and base-reward statistics in the advantage part's state)."""

from __future__ import annotations

import dataclasses

import pytest

from anypo.algorithms import PRESETS
from anypo.train import train
from tiny_runs import ctrl_c_in_rollout, interrupted_then_resumed, metric_rows


@pytest.mark.parametrize("name", ["aepo", "orpo_proxy"])
def test_interrupted_run_resumes_like_an_uninterrupted_one(name, make_cfg, tmp_path, monkeypatch):
    """Run A: 4 steps of 4 prompts (AEPO: 1 controller prompt per step). Run B: Ctrl-C at the start of
    step 3, resumed from the step-2 checkpoint: steps 3 and 4 equal A's (rewards, losses, gradient
    norms, the parts' metrics)."""
    kw = {
        "algo": PRESETS[name].build(),
        "steps": 4,
        "save_every": 10,
        "lr": 1e-2,
        "prompts_per_step": 4,
        "task": dataclasses.replace(make_cfg().task, num_train=16),
    }
    a = train(make_cfg(out_dir=str(tmp_path / "a"), **kw))
    ctrl_c_in_rollout(monkeypatch, step=3)
    b = interrupted_then_resumed(train, make_cfg(out_dir=str(tmp_path / "b"), **kw), undo=monkeypatch.undo)
    ra, rb = metric_rows(a), metric_rows(b)
    prefixes = ("reward/", "policy/loss", "train/grad_norm", "rollout/aepo", "rollout/base", "advantage/")
    for step in (3, 4):
        keys = [k for k in ra[step] if k.startswith(prefixes)]
        assert keys
        for k in keys:
            assert ra[step][k] == pytest.approx(rb[step][k], rel=1e-6, abs=1e-9), (name, step, k)
    if name == "aepo":
        assert sum(r["rollout/aepo_replaced"] for r in ra.values()) > 0  # the controller spliced rows
        assert {r["rollout/aepo_temperature"] for r in ra.values()} <= {0.8, 1.2}
    else:
        assert any(r["advantage/chi2_lambda"] > 0 and r["advantage/chi2_penalty"] != 0 for r in ra.values())
