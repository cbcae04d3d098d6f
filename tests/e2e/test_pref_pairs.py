"""`anypo pairs` (a preference dataset from a policy's samples, judged by an oracle) and the offline
loop's oracle evaluation, end to end on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from anypo.algorithms import PRESETS
from anypo.cli import main
from anypo.engines.base import SamplingConfig
from anypo.errors import UserError
from anypo.models import ModelConfig
from anypo.oracles import OracleConfig, make_oracle
from anypo.pref_pairs import PairsConfig, generate_pairs, pairs_config_problems
from anypo.tasks import TaskConfig, format_prompt, get_task
from anypo.tasks.preference_data import PreferenceDataConfig
from anypo.train_pref import PairOrder, PrefTrainConfig, pref_config_problems
from anypo.train_pref import train as train_offline
from anypo.train_pref_online import OnlinePrefTrainConfig
from anypo.train_pref_online import train as train_online
from tiny_runs import metric_rows, tiny_run

TASK = TaskConfig(name="addition", num_train=64, num_heldout=8)
ORACLE = OracleConfig(kind="intransitive", length_budget=5)  # the tiny model's replies differ in length


def _pairs(tmp_path: Path, **kw) -> Path:
    base = {
        "out": str(tmp_path / "pairs.jsonl"),
        "model": ModelConfig(name="tiny"),
        "task": TASK,
        "oracle": ORACLE,
        "sampling": SamplingConfig(temperature=1.0, max_new_tokens=8),
        "prompts": 10,
        "batch_prompts": 4,
        "progress": False,
    }
    return generate_pairs(PairsConfig(**{**base, **kw}))


def test_pairs_are_the_oracles_order_of_the_online_loops_prompts(tmp_path):
    """10 prompts x 2 samples: every row's chosen response beats its rejected one under an independent
    call of the oracle (P > 1/2, equal to the row's pair_prob); pairs + tied + unjudged = 10 prompts;
    the prompts are the first 10 of the online loop's seeded order (PairOrder(64, seed 0)), in that
    order minus the tied ones; generation_tokens x pairs = the tokens sampled (the meta file's count)."""
    out = _pairs(tmp_path)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    meta = json.loads(out.with_name("pairs.jsonl.meta.json").read_text())
    assert meta["pairs"] == len(rows) > 0
    assert meta["pairs"] + meta["tied_prompts"] + meta["unjudged_prompts"] == meta["prompts"] == 10
    task = get_task(TASK)
    examples = task.train_examples()
    oracle = make_oracle(ORACLE, task)
    by_question = {ex.messages()[-1]["content"]: ex for ex in examples}
    chosen_ex = [by_question[r["prompt"][-1]["content"]] for r in rows]
    p = oracle.prob(chosen_ex, [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    for row, pi in zip(rows, p.tolist(), strict=True):
        assert pi > 0.5 and pi == pytest.approx(row["pair_prob"])
    first = [examples[i].messages()[-1]["content"] for i in PairOrder(64, 0, epochs=1).peek(0, 10)]
    got = [r["prompt"][-1]["content"] for r in rows]
    assert got == [q for q in first if q in got]  # the online loop's order, tied prompts left out
    assert sum(r["generation_tokens"] for r in rows) == pytest.approx(meta["generated_tokens"])
    assert 0 < meta["generated_tokens"] <= 10 * 2 * 8  # at most 8 new tokens per sample


def test_pairs_config_problems_and_cli(tmp_path, capsys):
    cfg = PairsConfig(out="p.json", samples_per_prompt=3, prompts=0, oracle=OracleConfig(kind="same"))
    text = "\n".join(pairs_config_problems(cfg))
    for flag in ("--out", "--samples-per-prompt", "--prompts", "--oracle.kind"):
        assert flag in text
    with pytest.raises(UserError):
        generate_pairs(cfg)
    assert main(["pairs", "--out", str(tmp_path / "x.txt"), "--model.name", "tiny"]) == 2
    assert "ending in .jsonl" in capsys.readouterr().err
    argv = ["pairs", "--model.name", "tiny", "--task.num-train", "64", "--prompts", "4", "--no-progress",
            "--sampling.max-new-tokens", "8", "--oracle.kind", "intransitive", "--oracle.length-budget", "5", "--out", str(tmp_path / "c.jsonl")]  # fmt: skip
    assert main(argv) == 0
    assert "pairs from 4 prompts" in capsys.readouterr().out


def test_offline_run_on_generated_pairs_logs_the_online_evaluation(tmp_path):
    """DPO on pairs from `anypo pairs`, evaluated by the same oracle as an online run with the same seed,
    model and held-out prompts: at step 0 both policies are pi_1, so the two loops' evaluations
    (OracleEvaluation: the same seeded samples) agree exactly, and eval/kl_ref is 0. Each step logs
    the sampling cost of its pairs: 2 pairs x the file's generation_tokens. A proxy that is the same
    oracle as the gold scores the same samples, so eval/proxy equals eval/gold at every evaluation."""
    out = _pairs(tmp_path, prompts=12)
    share = json.loads(out.read_text().splitlines()[0])["generation_tokens"]
    ev = {"eval_every": 2, "eval_candidates": 3}
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8)
    cfg = tiny_run(
        PrefTrainConfig, tmp_path / "off", algo=PRESETS["dpo"].build(),
        data=PreferenceDataConfig(name=str(out), num_heldout=2), pairs_per_step=2, micro_batch_size=2,
        eval_prompts=0, eval_oracle=ORACLE, eval_task=TASK, oracle_eval_prompts=4, oracle_eval_sampling=sampling,
        eval_proxy=ORACLE, **ev,
    )  # fmt: skip
    off = metric_rows(train_offline(cfg))
    on_cfg = tiny_run(
        OnlinePrefTrainConfig, tmp_path / "on", algo=PRESETS["online_dpo"].build(), task=TASK, oracle=ORACLE,
        sampling=sampling, eval_sampling=sampling, prompts_per_step=2, micro_batch_size=2, eval_prompts=4, **ev,
    )  # fmt: skip
    on = metric_rows(train_online(on_cfg))
    keys = ("eval/win_rate_vs_init", "eval/gold_init", "eval/exploitability", "eval/nash_tv", "eval/kl_ref")
    assert off[0]["eval/kl_ref"] == 0.0
    for k in keys:
        assert off[0][k] == on[0][k], k
    assert off[2]["eval/kl_ref"] != 0.0 and not math.isnan(off[2]["eval/win_rate_vs_init"])
    assert off[1]["rollout/generated_tokens"] == pytest.approx(2 * share)
    for r in (off[0], off[2]):
        assert r["eval/proxy"] == r["eval/gold"] and r["eval/proxy_init"] == r["eval/gold_init"]


def test_offline_eval_oracle_config_problems(tmp_path):
    base = {"algo": PRESETS["dpo"].build(), "data": PreferenceDataConfig(num_train=16)}
    same = tiny_run(PrefTrainConfig, tmp_path, eval_oracle=OracleConfig(kind="same"), **base)
    assert any("--eval-oracle.kind is 'same'" in p for p in pref_config_problems(same))
    bad = tiny_run(
        PrefTrainConfig, tmp_path, eval_oracle=OracleConfig(), eval_task=TaskConfig(name="nope"), eval_every=1,
        oracle_eval_sampling=SamplingConfig(temperature=-1.0), **base,
    )  # fmt: skip
    text = "\n".join(pref_config_problems(bad))
    assert "--eval-task.name" in text and "--oracle-eval-sampling.temperature" in text
    proxy_alone = tiny_run(PrefTrainConfig, tmp_path, eval_proxy=OracleConfig(), **base)
    assert any("--eval-oracle.kind is none" in p for p in pref_config_problems(proxy_alone))
    assert pref_config_problems(tiny_run(PrefTrainConfig, tmp_path, **base)) == []


def test_generated_prompts_are_the_tasks_chat_prompts(tmp_path):
    """A row's prompt messages template to the same text the online loop tokenizes."""
    from anypo import models

    out = _pairs(tmp_path, prompts=3)
    tok = models.load_tokenizer("tiny")
    task = get_task(TASK)
    by_question = {ex.messages()[-1]["content"]: ex for ex in task.train_examples()}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        ex = by_question[row["prompt"][-1]["content"]]
        assert tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) == format_prompt(
            ex, tok
        )
