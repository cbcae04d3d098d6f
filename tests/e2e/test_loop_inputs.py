"""Inputs the online loop provides to the parts that declare them (beyond those of
test_loop_features.py): per-difficulty held-out pass@k, advantage metrics, per-mini-batch token
selections, and the behaviour policy's tempered / proxy / mean log-probs of the old-log-prob pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from anypo.tasks import TaskConfig


# ---- 1. held-out pass@k per difficulty level ------------------------------------------------------


def test_eval_reports_pass_at_k_per_difficulty_level(make_cfg):
    """graded_arithmetic interleaves its 4 levels (held-out example j has level j mod 4), so 8
    held-out prompts are 2 per level. With a verifier that accepts every answer to a level-0 or
    level-2 prompt and none other, pass@1 per level is 1, 0, 1, 0 whatever the tiny model writes,
    the overall pass@1 is their mean 0.5, and each level counts 2 prompts. A task without levels
    (addition) logs no level keys."""
    from anypo.train import Context

    cfg = make_cfg(task=TaskConfig(name="graded_arithmetic", num_train=16, num_heldout=8), eval_prompts=8)
    ctx = Context.build(cfg, Path(cfg.out_dir))
    assert [ex.meta["difficulty"] for ex in ctx.heldout[:8]] == [0, 1, 2, 3] * 2
    ctx.verify = lambda ex, text: 1.0 if ex.meta["difficulty"] in (0, 2) else 0.0
    m = ctx.evaluate()
    assert m["eval/pass@1"] == pytest.approx(0.5)
    for level, want in enumerate([1.0, 0.0, 1.0, 0.0]):
        assert m[f"eval/pass@1/level_{level}"] == want
        assert m[f"eval/prompts/level_{level}"] == 2.0

    plain = make_cfg(eval_prompts=4)
    ctx = Context.build(plain, Path(plain.out_dir))
    assert not any("level_" in k for k in ctx.evaluate())
