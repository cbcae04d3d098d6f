"""Shared by the distributed tests: the tiny run they train (the e2e tests' tiny run, 2 prompts x 4 samples)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from anypo.config import TrainConfig
from anypo.engines.base import SamplingConfig
from anypo.models import ModelConfig
from anypo.tasks import TaskConfig

TOY = str(Path(__file__).parents[1] / "e2e" / "toy_rewards.py")


def tiny_config(tmp_path, **kw) -> TrainConfig:
    """A 2-step run of the tiny model: 2 prompts x 4 samples, 8 new tokens, a reward that varies per sample."""
    base = TrainConfig(
        model=ModelConfig(name="tiny"),
        task=TaskConfig(name="addition", num_train=64, num_heldout=8),
        sampling=SamplingConfig(max_new_tokens=8),
        rewards=(f"{TOY}:char_sum",),
        steps=2,
        prompts_per_step=2,
        samples_per_prompt=4,
        micro_batch_size=4,
        lr=1e-3,
        eval_every=0,
        save_every=1,
        progress=False,
        out_dir=str(tmp_path),
    )
    return dataclasses.replace(base, **kw)
