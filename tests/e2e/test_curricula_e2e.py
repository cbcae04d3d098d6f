"""The loop with the data-selection parts: exact resume of per-prompt state (samplers, rollout
parts), variable group sizes through advantages and update, re-scoring tokens in the budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from anypo.algorithms import PRESETS
from anypo.rollout import ScafConfig
from anypo.samplers import UniformSampler
from anypo.train import Context, train
from tiny_runs import ctrl_c_in_rollout, interrupted_then_resumed, metric_rows


def _algo(name: str):
    algo = PRESETS[name].build()
    if name == "scaf_grpo":  # hints from the first step, so that every step uses them
        algo = dataclasses.replace(algo, rollout=ScafConfig(warmup_steps=0, max_levels=3))
    return algo


@pytest.mark.parametrize(
    "name", ["curriculum", "vas", "scaf_grpo", "ghpo", "gdro", "xrpo", "replay", "drpo_reset", "igrpo", "expo", "vspo"]
)
def test_interrupted_run_resumes_like_an_uninterrupted_one(name, make_cfg, tmp_path, monkeypatch):
    """Run A: 4 steps. Run B: Ctrl-C inside step 3 after the sampler drew its prompts; the checkpoint
    holds step 2 (per-prompt statistics, VAS weights, draw counters). Resumed, B's steps 3 and 4 must
    equal A's: same prompts, rewards, losses, gradient norms and sampler / rollout metrics."""
    algo = _algo(name)
    kw = {
        "algo": algo,
        "steps": 4,
        "save_every": 10,
        "lr": 1e-2,
        "task": dataclasses.replace(make_cfg().task, num_train=16),
    }
    a = train(make_cfg(out_dir=str(tmp_path / "a"), **kw))
    # the draw moves the sampler's state, then Ctrl-C
    ctrl_c_in_rollout(monkeypatch, step=3, before=lambda ctx: ctx.sampler.next_prompts(3))
    b = interrupted_then_resumed(train, make_cfg(out_dir=str(tmp_path / "b"), **kw))
    ra, rb = metric_rows(a), metric_rows(b)
    for step in (3, 4):
        keys = [
            k for k in ra[step] if k.startswith(("reward/", "policy/loss", "train/grad_norm", "sampler/", "rollout/"))
        ]
        keys = [k for k in keys if not k.startswith("rollout/generated_tokens_total")]
        for k in keys:
            assert ra[step][k] == rb[step][k], (name, step, k)


def test_variable_group_sizes_train(make_cfg, monkeypatch):
    """A sampler giving 3 and 5 samples to the two prompts of a step: the batch holds 8 rows in groups
    of 3 and 5, every group's advantages are centred (GRPO z-scores sum to 0 per group), and the
    update runs (a finite loss, an optimizer step)."""
    monkeypatch.setattr(UniformSampler, "group_sizes", lambda self, idx, G: [3, 5][: len(idx)])
    cfg = make_cfg(algo=PRESETS["grpo"].build(), steps=1)
    ctx = Context.build(cfg, Path(cfg.out_dir))
    batch, m = ctx.step(1)
    sizes = sorted(int((batch.group_ids == g).sum()) for g in batch.group_ids.unique())
    assert sizes == [3, 5] and batch.num_seqs == 8
    adv = batch.advantages[:, 0]
    for g in batch.group_ids.unique():
        assert abs(float(adv[batch.group_ids == g].sum())) < 1e-5
    assert m["train/optimizer_steps"] == 1.0 and m["rollout/generated_tokens"] == float(batch.response_mask.sum())


def test_rescoring_tokens_count_in_the_step(make_cfg):
    """VAS re-scores its pool before the first draw: 16 prompts x 8 samples, never trained on. The
    step's ``rollout/generated_tokens`` is the training batch's tokens plus ``rollout/rescore_tokens``."""
    cfg = make_cfg(algo=PRESETS["vas"].build(), steps=1, task=dataclasses.replace(make_cfg().task, num_train=16))
    ctx = Context.build(cfg, Path(cfg.out_dir))
    batch, m = ctx.rollout(1)
    assert m["rollout/rescored_prompts"] == 16 and batch.num_seqs == 8
    assert m["rollout/generated_tokens"] == m["rollout/rescore_tokens"] + float(batch.response_mask.sum())
    assert ctx.sampler.weights is not None and ctx.rollout(2)[1].get("rollout/rescored_prompts") is None


def test_dataset_reset_rollin_is_never_trained(make_cfg):
    """drpo_reset on the tiny model: every sample starts with a roll-in of the reference solution
    (masked), the advantages and the policy loss touch generated tokens only (0 on the roll-in), and
    the update runs."""
    cfg = make_cfg(algo=PRESETS["drpo_reset"].build(), steps=1)
    ctx = Context.build(cfg, Path(cfg.out_dir))
    batch, m = ctx.step(1)
    h = batch.extras["rollin_tokens"]
    assert all(v >= 1 for v in h) and m["rollout/reset_samples"] == batch.num_seqs
    for r, v in enumerate(h):
        assert batch.response_mask[r, :v].sum() == 0 and batch.advantages[r, :v].abs().sum() == 0
    assert m["rollout/generated_tokens"] == float(batch.response_mask.sum())
    assert m["train/skipped_updates"] == 0.0
