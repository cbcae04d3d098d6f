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


# ---- 2. the advantage part's metrics ------------------------------------------------------------


def test_loop_logs_the_advantage_parts_metrics(make_cfg, tmp_path):
    """gpg records alpha = B / (B - M) with batch.add_metric; the loop logs it as advantage/alpha. A
    reward that is flat (0) on prompts with an even answer and varies with the completion otherwise
    makes some groups flat; with equal groups alpha = 1 / (1 - all_equal_group_frac), both logged
    for the same step (the uniform sampler trains on every scored sample). The loop clears
    part_metrics after the call, so mini-batches and the next step never see it."""
    import json

    from anypo.algorithms import PRESETS
    from anypo.train import Context

    reward = tmp_path / "half_flat.py"
    reward.write_text(
        "def reward(sample):\n"
        "    if int(sample.answer) % 2 == 0:\n"
        "        return 0.0\n"
        "    return (sum(map(ord, sample.completion)) % 11) / 10\n"
    )
    cfg = make_cfg(algo=PRESETS["gpg"].build(), rewards=(f"{reward}:reward",), prompts_per_step=4, steps=2)
    ctx = Context.build(cfg, Path(cfg.out_dir))
    seen = []
    for step in (1, 2):
        batch, m = ctx.step(step)
        assert batch.part_metrics is None
        frac = m["rollout/all_equal_group_frac"]
        seen.append(frac)
        assert m["advantage/alpha"] == pytest.approx(1.0 / (1.0 - frac) if frac < 1 else 1.0)
    assert any(0 < f < 1 for f in seen), seen  # the check is not the trivial alpha = 1
    from anypo.train import train

    run = train(make_cfg(algo=PRESETS["gpg"].build(), steps=1))
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "advantage/alpha" in row
