"""Every preset trains the tiny model for 2 steps: parameters change, metrics are finite, checkpoints load."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from anypo import checkpoint
from anypo.algorithms import PRESETS
from anypo.models import load_model
from anypo.train import train


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_tiny_model(preset, make_cfg):
    cfg = make_cfg(algo=PRESETS[preset].build(), name=preset)
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, f"non-finite metrics: {bad}"
        assert r["train/skipped_updates"] == 0
    # parameters changed: the exported final policy differs from the seeded initial tiny model
    init = load_model("tiny", seed=cfg.seed).state_dict()
    final = load_file(str(run / "final" / "model.safetensors"))
    changed = [k for k, v in final.items() if k in init and not torch.equal(v, init[k])]
    assert changed, "no parameter changed"
    tensors, state = checkpoint.load(checkpoint.latest(run))
    assert state["step"] == 2 and "policy" in tensors
    assert (run / "README.md").exists() and (run / "reward.png").exists()


def test_dynamic_sampling_keeps_only_mixed_groups(make_cfg):
    """DAPO's sampler: with a constant reward every group is all-equal, so nothing is kept and the
    loop draws up to max_draws times, recording the draws."""
    algo = PRESETS["dapo"].build()
    algo = dataclasses.replace(algo, sampler=dataclasses.replace(algo.sampler, max_draws=3))
    cfg = make_cfg(algo=algo, steps=1, rewards=("format",))
    run = train(cfg)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["rollout/draws"] == 3.0
    assert row["rollout/all_equal_group_frac"] == 1.0
