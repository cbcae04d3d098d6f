"""Shared by the distributed tests: the tiny run they train (the e2e tests' tiny run, 2 prompts x 4 samples),
from tests/tiny_runs.py."""

import dataclasses
import json
from pathlib import Path

from tiny_runs import TOY, tiny_config

__all__ = ["CLUSTER_CPUS", "TOY", "rows", "single_and_ray", "tiny_config"]

CLUSTER_CPUS = 4
"""Logical CPUs of the Ray instance the tests share (conftest.py): room for 2 rollout actors + 2
learners, the largest run here."""


def rows(run_dir: Path, name: str) -> list[dict]:
    """The rows of ``run_dir/name`` (metrics.jsonl, samples.jsonl)."""
    return [json.loads(line) for line in (Path(run_dir) / name).read_text().splitlines()]


def single_and_ray(cfg, tmp_path: Path, dist) -> tuple[Path, Path]:
    """Train ``cfg`` in this process, then again on Ray with ``dist`` (a DistConfig) into ``tmp_path/dist``;
    assert that both logged the same completions and rewards, step by step; return both run directories."""
    from anypo.distributed import train as dist_train
    from anypo.train import train

    single = train(cfg)
    ray_run = dist_train(dataclasses.replace(cfg, out_dir=str(tmp_path / "dist"), dist=dist))
    s_samples, d_samples = rows(single, "samples.jsonl"), rows(ray_run, "samples.jsonl")
    assert len(s_samples) == len(d_samples) == cfg.steps * cfg.log_samples
    for a, b in zip(s_samples, d_samples, strict=True):
        assert (a["step"], a["completion"], a["reward"]) == (b["step"], b["completion"], b["reward"])
    return single, ray_run
