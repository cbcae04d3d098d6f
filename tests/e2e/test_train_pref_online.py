"""The online / iterative preference loop (anypo.train_pref_online) end to end on the tiny model:
snapshot rotation and the mixed reference against independent forwards, exact resume across an
iteration boundary, XPO's reference samples, evaluation, config errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anypo.algorithms import PRESETS
from anypo.engines.base import SamplingConfig
from anypo.errors import UserError
from anypo.oracles import OracleConfig
from anypo.tasks import TaskConfig
from anypo.train_pref import PairOrder, pair_logprobs
from anypo.train_pref_online import OnlinePrefLoop, OnlinePrefTrainConfig, online_pref_config_problems, train
from tiny_runs import interrupted_then_resumed, metric_rows, tiny_run


def ocfg(tmp_path: Path, preset: str = "online_dpo", algo=None, **kw) -> OnlinePrefTrainConfig:
    """2 steps of 2 prompts, 8 new tokens, the intransitive oracle with a 5-character budget (the tiny
    model's random replies differ in length, so the oracle separates most of them)."""
    base = {
        "algo": algo if algo is not None else PRESETS[preset].build(),
        "task": TaskConfig(name="addition", num_train=64, num_heldout=8),
        "oracle": OracleConfig(kind="intransitive", length_budget=5),
        "sampling": SamplingConfig(temperature=1.0, max_new_tokens=8),
        "eval_sampling": SamplingConfig(temperature=1.0, max_new_tokens=8),
        "prompts_per_step": 2,
        "micro_batch_size": 2,
    }
    return tiny_run(OnlinePrefTrainConfig, tmp_path, **{**base, **kw})


def _build(cfg, run_dir: Path) -> OnlinePrefLoop:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    return OnlinePrefLoop.build(cfg, run_dir)


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(model, weights) -> bool:
    return all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_snapshots_rotate_per_iteration_and_the_reference_is_their_mix(tmp_path):
    """APO with 2 steps per iteration and alpha 0.3: steps 1-2 are iteration 0 (pi_t = pi_{t-1} = pi_1);
    step 3 starts iteration 1 with pi_t = the weights after step 2 and pi_{t-1} = pi_1; step 5 starts
    iteration 2 with pi_t = weights after step 4, pi_{t-1} = weights after step 2. The loop's reference
    column equals 1.3 log pi_t - 0.3 log pi_{t-1} from independent unpacked forwards of those weights."""
    cfg = ocfg(tmp_path, algo=PRESETS["apo"].build(steps_per_iteration=2, samples=3), steps=5)
    loop = _build(cfg, tmp_path / "run")
    w0 = _weights(loop.model)
    loop.train_step(1)
    loop.train_step(2)
    assert not _same(loop.model, w0)  # it trained
    assert all(_same(loop.snaps[n], w0) for n in ("initial", "previous", "before"))
    w2 = _weights(loop.model)
    loop.train_step(3)
    assert _same(loop.snaps["previous"], w2) and _same(loop.snaps["before"], w0) and _same(loop.snaps["initial"], w0)
    loop.train_step(4)
    w4 = _weights(loop.model)
    loop.train_step(5)
    assert _same(loop.snaps["previous"], w4) and _same(loop.snaps["before"], w2)
    ex = loop.examples[:2]
    tp, _, _ = loop.make_pairs(ex, loop.prompt_ids[:2], seed=123)
    assert len(tp) >= 1
    loop.reference_columns(tp)
    idx = list(range(len(tp)))
    with torch.no_grad():
        pc, pr, _ = pair_logprobs(loop.snaps["previous"], tp, idx, loop.pad_id, pack=False)
        bc, br, _ = pair_logprobs(loop.snaps["before"], tp, idx, loop.pad_id, pack=False)
    for i in idx:
        n_c, n_r = len(tp.chosen[i]), len(tp.rejected[i])
        assert torch.allclose(tp.ref_chosen[i], 1.3 * pc.logprobs[i, :n_c] - 0.3 * bc.logprobs[i, :n_c], atol=1e-5)
        assert torch.allclose(tp.ref_rejected[i], 1.3 * pr.logprobs[i, :n_r] - 0.3 * br.logprobs[i, :n_r], atol=1e-5)


def test_ctrl_c_then_resume_matches_uninterrupted_across_iterations(tmp_path, monkeypatch):
    """APO, 2 steps per iteration, 5 steps. Run B gets Ctrl-C as step 4 draws its prompts
    (save_every=10: the scaffold saves step 3, whose iterate snapshot pi_t differs from pi_1);
    resumed, steps 4-5 (another rotation at step 5) and the final weights equal run A's exactly."""
    algo = PRESETS["apo"].build(steps_per_iteration=2, samples=3)
    kw = dict(steps=5, save_every=10)
    run_a = train(ocfg(tmp_path / "a", algo=algo, **kw))
    real, calls = PairOrder.next_pairs, {"n": 0}

    def interrupting(self, count):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, count)

    monkeypatch.setattr(PairOrder, "next_pairs", interrupting)
    run_b = interrupted_then_resumed(train, ocfg(tmp_path / "b", algo=algo, **kw), saved_step=3, undo=monkeypatch.undo)
    rows_a, rows_b = metric_rows(run_a), metric_rows(run_b)
    assert sorted(rows_b) == [1, 2, 3, 4, 5]
    for step in (4, 5):
        for k in ("pref/loss", "data/pairs", "data/gold", "train/grad_norm", "pref/logps_chosen"):
            assert rows_a[step].get(k) == rows_b[step].get(k), (step, k)
    assert rows_a[5]["data/iteration"] == 2.0
    fa, fb = (load_file(str(r / "final" / "model.safetensors")) for r in (run_a, run_b))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_xpo_pairs_a_policy_sample_with_a_reference_sample(tmp_path):
    """Each XPO pair has exactly one side from the reference policy (ref_sample_chosen + _rejected = 1),
    the win rates of a 2-sample game are (1/2 + P_wl)/2 and (1/2 + 1 - P_wl)/2, and the step trains."""
    loop = _build(ocfg(tmp_path, "xpo"), tmp_path / "run")
    tp, m, _ = loop.make_pairs(loop.examples[:4], loop.prompt_ids[:4], seed=7)
    assert m["data/prompts"] == 4 and m["data/pairs"] + m["data/tied_prompts"] + m["data/unjudged_prompts"] == 4
    for i in range(len(tp)):
        assert tp.extras["ref_sample_chosen"][i] + tp.extras["ref_sample_rejected"][i] == 1.0
        p = tp.extras["pair_prob"][i]
        assert tp.extras["winrate_chosen"][i] == pytest.approx((0.5 + p) / 2)
        assert tp.extras["winrate_rejected"][i] == pytest.approx((1.5 - p) / 2)
    m, _ = loop.train_step(1)
    assert m["rollout/generated_tokens"] > 0 and "pref/xpo_bonus" in m or m["data/pairs"] == 0


def test_evaluation_metrics(tmp_path):
    """Before training the policy is pi_1: eval/kl_ref is exactly 0; win rate in [0, 1]; exploitability
    in [0, 1/2]; nash_tv in [0, 1]. After 2 steps at lr 1e-3 the policy moved: kl_ref != 0."""
    run = train(ocfg(tmp_path, "sppo", eval_every=2, eval_prompts=4, eval_candidates=3))
    rows = metric_rows(run)
    r0, r2 = rows[0], rows[2]
    assert r0["eval/kl_ref"] == 0.0
    for r in (r0, r2):
        assert 0.0 <= r["eval/win_rate_vs_init"] <= 1.0
        if "eval/exploitability" in r:
            assert 0.0 <= r["eval/exploitability"] <= 0.5 and 0.0 <= r["eval/nash_tv"] <= 1.0
    assert r2["eval/kl_ref"] != 0.0 and r0["eval/gold_init"] == r2["eval/gold_init"]


def test_config_problems_are_listed(tmp_path):
    algo = dataclasses.replace(PRESETS["online_dpo"].build(), samples_per_prompt=3, ref_initial=0.5)
    cfg = ocfg(tmp_path, algo=algo, task=TaskConfig(name="rg:leg_counting"), oracle=OracleConfig(temperature=-1))
    problems = online_pref_config_problems(cfg)
    text = "\n".join(problems)
    assert len(problems) == 4, problems
    for flag in ("--algo.samples-per-prompt", "--algo.ref-initial", "--task.name", "--oracle.temperature"):
        assert flag in text
    with pytest.raises(UserError):
        train(cfg)


class _Scripted:
    """An oracle whose verdicts are scripted per call: P values in order (NaN = could not judge)."""

    def __init__(self, values):
        self.values, self.num_unjudged = list(values), 0

    def prob(self, xs, ys, y2s):
        out = torch.tensor([self.values.pop(0) for _ in ys], dtype=torch.float64)
        self.num_unjudged += int(torch.isnan(out).sum())
        return out

    def gold(self, xs, ys):
        return torch.zeros(len(ys), dtype=torch.float64)


def test_unjudged_and_tied_prompts_give_no_pair_and_are_counted(tmp_path):
    """online_dpo, 3 prompts, one oracle call per prompt: P = 0.9 (the first sample is chosen), 0.5 (a
    tie: no pair), NaN (could not judge: no pair, counted). best_worst with K = 3 (3 calls per prompt):
    P_01 = NaN, P_02 = 0.8, P_12 = 0.3 -> sample 0 has one NaN, sample 1 one: the first with the most
    NaNs (0) is dropped, leaving samples 1 and 2 with P_12 = 0.3: chosen 2, P(y_w > y_l) = 0.7."""
    loop = _build(ocfg(tmp_path, "online_dpo"), tmp_path / "run")
    loop.oracle = _Scripted([0.9, 0.5, float("nan")])
    tp, m, probs = loop.make_pairs(loop.examples[:3], loop.prompt_ids[:3], seed=1)
    assert (m["data/pairs"], m["data/tied_prompts"], m["data/unjudged_prompts"], m["data/unjudged_pairs"]) == (
        1,
        1,
        1,
        1,
    )
    assert probs == [0.9] and tp.extras["winrate_chosen"] == [pytest.approx(0.7)]
    algo = dataclasses.replace(PRESETS["iterative_dpo"].build(samples=3), sample_from="policy")
    loop = _build(ocfg(tmp_path / "b", algo=algo), tmp_path / "run_b")
    loop.oracle = _Scripted([float("nan"), 0.8, 0.3])
    tp, m, probs = loop.make_pairs(loop.examples[:1], loop.prompt_ids[:1], seed=1)
    assert m["data/pairs"] == 1 and m["data/unjudged_pairs"] == 1 and probs == [pytest.approx(0.7)]


def test_a_plugin_judge_drives_the_loop(tmp_path):
    """--oracle.kind judge with a file plug-in (prefers the shorter response; judged in both orders):
    a step trains on its pairs, and no training gold metric is logged (a judge has no gold score);
    with --eval-oracle.kind verifier_bt the evaluation has the verifier's gold reward (the proxy /
    gold split of an over-optimisation study). --oracle.kind same is refused."""
    f = tmp_path / "judge.py"
    f.write_text("def judge(prompts, a, b):\n    return ['A' if len(x) < len(y) else 'B' for x, y in zip(a, b)]\n")
    judge = OracleConfig(kind="judge", judge=f"{f}:judge")
    cfg = ocfg(tmp_path, oracle=judge, eval_oracle=OracleConfig(), steps=1, eval_every=1, eval_prompts=2)
    rows = metric_rows(train(cfg))
    assert rows[1]["data/pairs"] >= 1 and rows[1]["train/optimizer_steps"] == 1.0
    assert not any(k.startswith("data/gold") for r in rows.values() for k in r)
    assert "eval/gold" in rows[1] and "eval/gold_init" in rows[0]
    assert 0.0 <= rows[1]["eval/win_rate_vs_init"] <= 1.0
    problems = online_pref_config_problems(ocfg(tmp_path, oracle=OracleConfig(kind="same")))
    assert len(problems) == 1 and "--oracle.kind is 'same'" in problems[0]


def test_the_training_oracle_scores_the_evaluation_samples_as_the_proxy(tmp_path):
    """An evaluation oracle other than the training one (here a second intransitive oracle object with
    the same settings): the training oracle's score of the same evaluation samples is eval/proxy, so
    it equals eval/gold here; with --eval-oracle.kind same there is no proxy key."""
    cfg = ocfg(tmp_path, eval_oracle=OracleConfig(kind="intransitive", length_budget=5), steps=1, eval_every=1,
               eval_prompts=3)  # fmt: skip
    rows = metric_rows(train(cfg))
    for r in (rows[0], rows[1]):
        assert r["eval/proxy"] == r["eval/gold"] and r["eval/proxy_init"] == r["eval/gold_init"]
    same = metric_rows(train(ocfg(tmp_path / "s", steps=1, eval_every=1, eval_prompts=3)))
    assert "eval/proxy" not in same[0]
