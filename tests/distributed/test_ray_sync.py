"""Synchronous mode on Ray equals the single process (``anypo.distributed.ray_run``).

The same tiny run (seed 0, 2 steps of 2 prompts x 4 samples, GRPO with its KL term, micro-batches of
3 so the two learners' shares split unevenly into micro-batches) once with ``anypo.train.train`` and
once with ``--dist.backend ray --dist.rollout-workers 2 --dist.learners 2`` on a local Ray cluster.

Expected: the same completions and rewards at every step (each generate call runs whole on one
rollout actor, whose weights are the learners' gathered ones: the samples of one process), the same
loss and gradient norm within float32 reduction noise (rel 1e-4; the learners sum their shares'
gradients in another order, and run the padded forward where the single process packs), and the
same final weights: AdamW's first steps move each weight by about lr * sign(g), so a difference in
the gradients' last bits gives weight differences far below lr = 1e-3 (bound: 1e-5).

Every ``ray.get`` and collective of the run has a 120 s timeout, so a hang fails the test.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'anypo[ray]')")
pytestmark = pytest.mark.distributed

sys.path.insert(0, str(Path(__file__).parent))
from dist_helpers import tiny_config  # noqa: E402

from anypo.config import DistConfig  # noqa: E402


def rows(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run_dir / "final").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_two_rollout_actors_and_two_learners_equal_the_single_process(tmp_path):
    from anypo.distributed import train as dist_train
    from anypo.train import train

    cfg = tiny_config(tmp_path / "single", micro_batch_size=3, log_samples=8)
    single = train(cfg)
    dcfg = dataclasses.replace(
        cfg,
        out_dir=str(tmp_path / "dist"),
        dist=DistConfig(backend="ray", rollout_workers=2, learners=2, timeout_s=120, object_store_mb=256),
    )
    dist = dist_train(dcfg)

    s_samples, d_samples = rows(single, "samples.jsonl"), rows(dist, "samples.jsonl")
    assert len(s_samples) == len(d_samples) == 16
    for a, b in zip(s_samples, d_samples, strict=True):
        assert (a["step"], a["completion"], a["reward"]) == (b["step"], b["completion"], b["reward"])
    s_rows, d_rows = rows(single, "metrics.jsonl"), rows(dist, "metrics.jsonl")
    assert [r["step"] for r in s_rows] == [r["step"] for r in d_rows] == [1, 2]
    for a, b in zip(s_rows, d_rows, strict=True):
        assert a["reward/mean"] == b["reward/mean"]
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-4, abs=1e-6)
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)
        assert b["kl/ref"] == pytest.approx(a["kl/ref"], rel=1e-3, abs=1e-7)
        assert b["dist/engine_logprob_max_abs_diff"] < 1e-4  # the engine's log-probs against the learners'
        assert b["train/optimizer_steps"] == a["train/optimizer_steps"] == 1
    ws, wd = final_weights(single), final_weights(dist)
    assert set(ws) == set(wd) and ws
    diff = max(float((ws[k] - wd[k]).abs().max()) for k in ws)
    moved = max(float((ws[k] - w0).abs().max()) for k, w0 in _initial(cfg).items() if k in ws)
    assert moved > 1e-4  # the weights did change
    assert diff <= 1e-5, diff


def _initial(cfg) -> dict[str, torch.Tensor]:
    from anypo.models import load_model

    return dict(load_model(cfg.model, seed=cfg.seed).state_dict())
