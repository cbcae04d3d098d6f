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


def test_token_axis_averages_seeds_and_sums_offline_costs(tmp_path):
    """Online seeds at step 5 with 80 and 120 tokens generated -> x = 100 (their mean), where a set
    intersection of token values would leave nothing. An offline run (no _total key) logs 30 tokens of
    pair cost at steps 1..5 -> its step-5 x is the running sum 150. The table: step 0 -> last mean,
    (min-max over seeds), the last x as tokens generated: online_dpo (0.4 + 0.6)/2 = 0.5 -> (0.5 + 0.7)/2
    = 0.6 over 0.5-0.7 at 100 tokens; dpo 0.45 -> 0.55 at 150."""
    write_run(tmp_path / "a", "online_dpo", [{"step": 0, "eval/gold": 0.4},
              {"step": 5, "rollout/generated_tokens_total": 80, "eval/gold": 0.5}])  # fmt: skip
    write_run(tmp_path / "b", "online_dpo", [{"step": 0, "eval/gold": 0.6},
              {"step": 5, "rollout/generated_tokens_total": 120, "eval/gold": 0.7}])  # fmt: skip
    off = [{"step": 0, "eval/gold": 0.45}] + [{"step": k, "rollout/generated_tokens": 30.0} for k in range(1, 5)]
    off.append({"step": 5, "rollout/generated_tokens": 30.0, "eval/gold": 0.55})
    write_run(tmp_path / "c", "dpo", off)
    runs = fig.run_dirs([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    c = fig.curves(runs, "eval/gold", "tokens")
    assert c["online_dpo"][0] == [0.0, 100.0] and c["online_dpo"][1] == pytest.approx([0.5, 0.6])
    assert c["dpo"][0] == [0.0, 150.0]
    t = fig.table(runs, ["eval/gold"]).splitlines()
    assert t[2] == "| dpo | 1 | 0.450 -> **0.550** (0.550-0.550) | 150 |"
    assert t[3] == "| online_dpo | 2 | 0.500 -> **0.600** (0.500-0.700) | 100 |"


def test_kl_axis_and_runs_labelled_by_name(tmp_path):
    """Two rpo runs with different overrides (names rpo and rpo_no_sft): by preset they would average as
    seeds; --label name keeps them apart. --x kl puts each evaluation at its eval/kl_ref: gold 0.1 at
    KL 0, then 0.3 at KL 0.5 (rpo); a step without eval/kl_ref is left out."""
    for name, kl, gold in (("rpo", 0.5, 0.3), ("rpo_no_sft", 2.0, 0.2)):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"preset": "rpo", "name": name}))
        rows = [{"step": 0, "eval/kl_ref": 0.0, "eval/gold": 0.1}, {"step": 5, "eval/gold": 0.9},
                {"step": 10, "eval/kl_ref": kl, "eval/gold": gold}]  # fmt: skip
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    runs = fig.run_dirs([tmp_path / "rpo", tmp_path / "rpo_no_sft"])
    assert list(fig.curves(runs, "eval/gold", "kl")) == ["rpo"]
    c = fig.curves(runs, "eval/gold", "kl", "name")
    assert c["rpo"][0] == [0.0, 0.5] and c["rpo"][1] == [0.1, 0.3]
    assert c["rpo_no_sft"][0] == [0.0, 2.0] and c["rpo_no_sft"][1] == [0.1, 0.2]
