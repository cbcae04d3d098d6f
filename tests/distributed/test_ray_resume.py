"""Checkpoints of a distributed run resume anywhere, and a learner failure keeps the last good one.

One scenario crosses every boundary (one Ray cluster start, for CI's time): a 4-step run with a
checkpoint every step is

1. started in one process and interrupted (Ctrl-C) at step 2's rollout: checkpoint of step 1, whose
   optimizer state is keyed by parameter position (a single process's AdamW);
2. resumed on Ray with 2 learners (the optimizer state now split into FSDP2 shards, loaded by
   parameter name); steps 2 and 3 run; before step 4's update learner 1 is killed: the run stops with
   a ``TrainingError`` that names the last good checkpoint (step 3, written by the learners: the
   optimizer state gathered from both shards, keyed by name);
3. resumed in one process (``--dist.backend none``): step 4.

Expected, against the same 4 steps run uninterrupted in one process:
- the same completions and rewards at every step (the sampler and RNG states come back with each
  checkpoint, the rollout actors generate with the learners' weights, and those weights equal the
  single process's to float32 reduction noise, far below what changes a sampled token here);
- the same final weights within 1e-5: a lost or reset AdamW state would show at once, since AdamW's
  first steps move every weight by about lr = 1e-3, while the learners' padded forward and two-rank
  gradient sum differ from the packed single-process pass by about 1e-7 (test_ray_sync.py).
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


def samples(run: Path) -> list[tuple]:
    return [
        (r["step"], r["completion"], r["reward"])
        for r in map(json.loads, (run / "samples.jsonl").read_text().splitlines())
    ]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run_dir / "final").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_single_to_ray_to_single_with_a_learner_killed(tmp_path, monkeypatch, ray_cluster):
    import ray

    from anypo import checkpoint
    from anypo.distributed import train as dist_train
    from anypo.distributed.ray_run import DistContext
    from anypo.run import TrainingError
    from anypo.train import train
    from tiny_runs import ctrl_c_in_rollout, metric_rows

    base = dict(steps=4, save_every=1, keep_checkpoints=4, log_samples=8)
    reference = train(tiny_config(tmp_path / "reference", **base))

    # 1. one process, Ctrl-C at step 2's rollout
    cfg = tiny_config(tmp_path / "crossed", **base)
    ctrl_c_in_rollout(monkeypatch, step=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    (run,) = [p for p in Path(cfg.out_dir).iterdir() if p.is_dir()]
    assert checkpoint.latest(run).name == "step_000001"

    # 2. on Ray with 2 learners; learner 1 killed before step 4's update
    real = DistContext.rollout

    def rollout(self, step):
        if step == 4:
            ray.kill(self.cluster.learners[1], no_restart=True)
        return real(self, step)

    monkeypatch.setattr(DistContext, "rollout", rollout)
    dcfg = dataclasses.replace(
        cfg, dist=DistConfig(backend="ray", rollout_workers=1, learners=2, timeout_s=120, object_store_mb=256)
    )
    with pytest.raises(TrainingError, match="a learner died during step 4's update.*step_000003"):
        dist_train(dcfg, resume=run)
    monkeypatch.undo()
    assert checkpoint.latest(run).name == "step_000003"
    assert sorted(metric_rows(run)) == [1, 2, 3]
    assert metric_rows(run)[3]["dist/learners"] == 2.0  # steps 2 and 3 ran on the learner group

    # 3. one process again
    train(cfg, resume=run)
    assert sorted(metric_rows(run)) == [1, 2, 3, 4]
    assert samples(run) == samples(reference)
    ref, got = final_weights(reference), final_weights(run)
    assert ref.keys() == got.keys()
    worst = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    assert worst < 1e-5, worst


def test_resume_accepts_only_dist_options(tmp_path, capsys):
    """``anypo train --resume DIR`` may change where the run executes (--dist.*), nothing else."""
    from anypo.cli import main

    assert main(["train", "--resume", str(tmp_path), "--lr", "1"]) == 2
    assert "only where the run executes may change" in capsys.readouterr().err
