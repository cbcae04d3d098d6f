"""scripts/preference_figure.py on synthetic run directories: per-preset mean / min / max over seeds at
the x values every seed logged, the token axis, compare directories, and the PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "preference_figure.py"
spec = importlib.util.spec_from_file_location("preference_figure", SCRIPT)
fig = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fig)


def write_run(d: Path, preset: str, rows: list[dict]) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"_type": "OnlinePrefTrainConfig", "preset": preset}))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


def test_curves_mean_min_max_over_seeds(tmp_path):
    """sppo seeds: exploitability (0.4, 0.2) and (0.2, 0.1) at steps 0 and 5 -> mean (0.3, 0.15), min
    (0.2, 0.1), max (0.4, 0.2). apo: seed 0 has steps 0 and 5, seed 1 only step 0 -> only step 0, mean
    (0.5 + 0.3)/2 = 0.4. Tokens axis: the cumulative training tokens at the evaluated step (0, then 80)."""
    cmp = tmp_path / "compare-x" / "runs"
    write_run(cmp / "sppo-s0", "sppo", [{"step": 0, "eval/exploitability": 0.4},
              {"step": 5, "rollout/generated_tokens_total": 80, "eval/exploitability": 0.2}])  # fmt: skip
    write_run(cmp / "sppo-s1", "sppo", [{"step": 0, "eval/exploitability": 0.2},
              {"step": 5, "rollout/generated_tokens_total": 80, "eval/exploitability": 0.1}])  # fmt: skip
    write_run(cmp / "apo-s0", "apo", [{"step": 0, "eval/exploitability": 0.5}, {"step": 5, "eval/exploitability": 0.3}])
    write_run(cmp / "apo-s1", "apo", [{"step": 0, "eval/exploitability": 0.3}, {"step": 5, "pref/loss": 1.0}])
    runs = fig.run_dirs([tmp_path / "compare-x"])
    assert len(runs) == 4
    c = fig.curves(runs, "eval/exploitability")
    xs, mean, lo, hi = c["sppo"]
    assert xs == [0.0, 5.0] and mean == pytest.approx([0.3, 0.15]) and lo == [0.2, 0.1] and hi == [0.4, 0.2]
    assert c["apo"][0] == [0.0] and c["apo"][1] == pytest.approx([0.4])
    assert fig.curves(runs, "eval/exploitability", "tokens")["sppo"][0] == [0.0, 80.0]
    out = tmp_path / "f.png"
    assert fig.main([str(tmp_path / "compare-x"), "--out", str(out)]) == 0 and out.stat().st_size > 0


def test_no_evaluation_is_a_clear_error(tmp_path):
    run = write_run(tmp_path / "r", "sppo", [{"step": 1, "pref/loss": 1.0}])
    with pytest.raises(SystemExit, match="eval-every"):
        fig.main([str(run), "--out", str(tmp_path / "f.png")])
    with pytest.raises(SystemExit, match="neither a run directory"):
        fig.run_dirs([tmp_path / "nothing"])
