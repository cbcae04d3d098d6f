"""Online DPO on the positive-continuation task judged by the lexical oracles, end to end on the tiny
model: `anypo train online_dpo --smoke --task.name positive_continuation --oracle.kind vader`, with the
profanity judge as the evaluation oracle."""

from __future__ import annotations

import json
import math

import pytest

from anypo import cli
from anypo.rewards.lexical import missing_judge_package

pytestmark = pytest.mark.skipif(
    bool(missing_judge_package("vader") or missing_judge_package("profanity")),
    reason="the judges extra is not installed (pip install 'anypo[judges]'; make setup installs it)",
)


def test_online_dpo_smoke_on_positive_continuation_with_lexical_judges(tmp_path):
    """2 steps: pairs judged by VADER (data/gold is the mean compound score of the samples, in [-1, 1]),
    evaluated at the end by the profanity judge (eval/gold = mean 1 - P(offensive), in [0, 1]); every
    metric finite, no skipped update."""
    argv = ["train", "online_dpo", "--smoke", "--task.name", "positive_continuation", "--oracle.kind", "vader"]
    argv += ["--eval-oracle.kind", "profanity", "--eval-every", "2", "--eval-prompts", "2", "--eval-candidates", "2"]
    argv += ["--eval-sampling.max-new-tokens", "8", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "data/prompts" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
    for r in train:
        assert r.get("train/skipped_updates", 0.0) == 0
        if "data/gold" in r:
            assert -1.0 <= r["data/gold"] <= 1.0
    evals = [r for r in rows if "eval/gold" in r]
    assert evals and all(0.0 <= r["eval/gold"] <= 1.0 for r in evals)
    cfg = json.loads((run / "config.json").read_text())
    assert "positive_continuation" in json.dumps(cfg) and '"vader"' in json.dumps(cfg)
