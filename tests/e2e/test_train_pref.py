"""The offline preference loop (anypo.train_pref) on the tiny model: micro-batch invariance, the cached
reference column against an independent forward pass, DPO by hand, exact resume after Ctrl-C and
SIGKILL, epochs, budgets, evaluation and config errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anypo import checkpoint, cli
from anypo.engines.base import SamplingConfig
from anypo.errors import UserError
from anypo.losses.preference import DPO, IPO, RPO
from anypo.models import load_model
from anypo.tasks.preference_data import PreferenceDataConfig
from anypo.train_pref import PairOrder, PrefAlgoConfig, PrefLoop, PrefTrainConfig, check_pref_config, train
from tiny_runs import interrupted_then_resumed, metric_rows, tiny_run

COMPARED = (
    "loss/total",
    "pref/loss",
    "pref/reward_margin",
    "pref/logps_chosen",
    "train/grad_norm",
    "kl/logratio_token",
)


def pref_cfg(tmp_path, **kw) -> PrefTrainConfig:
    """Tiny model, 16 built-in addition pairs, 8 pairs per step, no evaluation (2 steps, lr 1e-3)."""
    base = {"data": PreferenceDataConfig(num_train=16, num_heldout=4), "pairs_per_step": 8, "micro_batch_size": 8}
    return tiny_run(PrefTrainConfig, tmp_path, **{**base, **kw})


def _build(cfg: PrefTrainConfig, run_dir: Path) -> PrefLoop:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    return PrefLoop.build(cfg, run_dir)


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Move the policy away from the reference (its initial weights), deterministically."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.abs().mean().clamp(min=1e-3))


def _grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@torch.no_grad()
def _seq_logprobs(model: torch.nn.Module, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Per-token log-probs of ``response`` after ``prompt``: one unpadded, unpacked forward of the
    concatenation, log-softmax in float64 (an implementation independent of anypo.policy)."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].double()  # [P + T, V]
    pred = logits[len(prompt) - 1 : -1]  # position P - 1 + t predicts response token t
    return torch.log_softmax(pred, -1).gather(1, torch.tensor(response)[:, None])[:, 0]


LOSSES = {
    "dpo": DPO(beta=0.1),
    "rpo_token_mean": RPO(beta=0.1, sft_weight=0.5, sft_reduction="token_mean"),
    "ipo_length_normalized": IPO(beta=0.1, length_normalize=True),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_microbatch_invariance(tmp_path, name):
    """The loss, every metric and the gradient of one step of 8 pairs are the same (within 1e-5;
    relative for the ~200-nat sequence log-probs, whose float32 rounding alone is ~1e-5 absolute)
    for micro-batches of 8, 4 and 1 pairs: each micro-batch divides by the step's global pair and
    chosen-token counts, so the micro-batch losses and gradients add up to the step's."""
    got = {}
    for micro in (8, 4, 1):
        cfg = pref_cfg(tmp_path, micro_batch_size=micro, algo=PrefAlgoConfig(loss=LOSSES[name]))
        loop = _build(cfg, tmp_path / f"m{micro}")
        _perturb(loop.model, scale=1.0)  # a policy away from the reference: non-zero margins and gradients
        loop.model.zero_grad(set_to_none=True)
        metrics, per_pair = loop.accumulate(loop.train_pairs, list(range(8)))
        got[micro] = (metrics, _grads(loop.model), per_pair)
    m8, g8, p8 = got[8]
    assert abs(m8["loss/total"] - math.log(2)) > 1e-3  # the perturbation moved the loss
    for micro in (4, 1):
        m, g, p = got[micro]
        for k in m8:
            if not k.startswith("time/"):
                assert m[k] == pytest.approx(m8[k], rel=1e-5, abs=1e-5), (micro, k)
        assert set(m) == set(m8)
        assert (g - g8).abs().max() <= 1e-5 * max(1.0, float(g8.abs().max())), micro
        assert p.keys() == p8.keys()


def test_cached_reference_equals_a_fresh_reference_pass(tmp_path, monkeypatch):
    """The reference column (packed micro-batch passes of the initial policy at build time) equals,
    within 1e-5, each response's log-probs from an independent unpacked forward of a freshly
    loaded initial model; a second build of the same run directory reads the saved column back
    bit for bit instead of running the reference pass again."""
    cfg = pref_cfg(tmp_path, micro_batch_size=4, eval_every=5, eval_pairs=3)
    run = tmp_path / "run"
    loop = _build(cfg, run)
    tp = loop.train_pairs
    planned = loop._planned()
    assert planned == list(range(16))  # 2 steps x 8 pairs = every training pair
    fresh = load_model(cfg.model, seed=cfg.seed).eval()
    for i in planned:
        for col, resp in ((tp.ref_chosen, tp.chosen[i]), (tp.ref_rejected, tp.rejected[i])):
            expected = _seq_logprobs(fresh, tp.prompt[i], resp)
            assert col[i].shape == expected.shape
            assert torch.allclose(col[i].double(), expected, atol=1e-5, rtol=0), i
    held = loop.heldout_pairs
    assert [i for i in range(len(held)) if held.ref_chosen[i] is not None] == [0, 1, 2]  # eval_pairs = 3
    assert (run / "reference_logprobs.safetensors").exists()

    def no_pass(*a, **k):
        raise AssertionError("the reference pass ran again")

    monkeypatch.setattr(PrefLoop, "_reference_pass", no_pass)
    again = _build(cfg, run)
    for i in planned:
        assert torch.equal(again.train_pairs.ref_chosen[i], tp.ref_chosen[i])
        assert torch.equal(again.train_pairs.ref_rejected[i], tp.ref_rejected[i])


def test_only_the_planned_pairs_get_a_reference_pass(tmp_path):
    """1 step of 4 of 16 pairs: the reference pass covers exactly the 4 pairs the data order will
    visit (not the whole dataset), and they are the ones step 1 trains on."""
    cfg = pref_cfg(tmp_path, steps=1, pairs_per_step=4)
    loop = _build(cfg, tmp_path / "run")
    have = [i for i in range(len(loop.train_pairs)) if loop.train_pairs.ref_chosen[i] is not None]
    assert have == sorted(PairOrder(16, cfg.seed, 1).next_pairs(4))
    assert len(have) == 4


def test_dpo_loss_on_one_batch_equals_a_hand_computation(tmp_path):
    """DPO on 3 pairs, computed by hand: per-pair sequence log-probs of the perturbed policy and of
    the initial (reference) model from independent unpacked forwards, then
    ``L = (1/3) sum_i log(1 + exp(-beta ((pc_i - rc_i) - (pr_i - rr_i))))`` in Python floats; the
    implicit-reward metrics are ``beta (p - r)`` means, accuracy the share of positive margins."""
    beta = 0.1
    cfg = pref_cfg(tmp_path, micro_batch_size=2, algo=PrefAlgoConfig(loss=DPO(beta=beta)))
    loop = _build(cfg, tmp_path / "run")
    ref_model = load_model(cfg.model, seed=cfg.seed).eval()
    _perturb(loop.model, scale=1.0)
    idx = [0, 5, 9]
    tp = loop.train_pairs
    losses, margins, r_w, r_l = [], [], [], []
    for i in idx:
        pc = float(_seq_logprobs(loop.model, tp.prompt[i], tp.chosen[i]).sum())
        pr = float(_seq_logprobs(loop.model, tp.prompt[i], tp.rejected[i]).sum())
        rc = float(_seq_logprobs(ref_model, tp.prompt[i], tp.chosen[i]).sum())
        rr = float(_seq_logprobs(ref_model, tp.prompt[i], tp.rejected[i]).sum())
        z = beta * ((pc - rc) - (pr - rr))
        losses.append(math.log1p(math.exp(-z)))
        margins.append(z)
        r_w.append(beta * (pc - rc))
        r_l.append(beta * (pr - rr))
    loop.model.zero_grad(set_to_none=True)
    m, _ = loop.accumulate(tp, idx)
    assert m["loss/total"] == pytest.approx(sum(losses) / 3, abs=1e-5)
    assert m["pref/loss"] == pytest.approx(sum(losses) / 3, abs=1e-5)
    assert m["pref/reward_margin"] == pytest.approx(sum(margins) / 3, abs=1e-5)
    assert m["pref/reward_chosen"] == pytest.approx(sum(r_w) / 3, abs=1e-5)
    assert m["pref/reward_rejected"] == pytest.approx(sum(r_l) / 3, abs=1e-5)
    assert m["pref/accuracy"] == pytest.approx(sum(z > 0 for z in margins) / 3)
    assert abs(m["loss/total"] - math.log(2)) > 1e-3


def test_pair_order_is_a_resumable_per_epoch_shuffle():
    """Each epoch is a permutation of all pairs drawn from (seed, epoch) alone; the stream ends after
    `epochs` passes; a new order loaded with the position continues identically."""
    order = PairOrder(6, seed=0, epochs=2)
    first = order.next_pairs(4) + order.next_pairs(4)
    rest = order.next_pairs(4)
    assert len(rest) == 4 and order.done() and order.next_pairs(4) == []
    stream = first + rest
    assert sorted(stream[:6]) == list(range(6)) and sorted(stream[6:]) == list(range(6))
    assert stream[:6] != stream[6:]  # a fresh order per epoch
    again = PairOrder(6, seed=0, epochs=2)
    again.load_state_dict({"position": 5})
    assert again.next_pairs(7) == stream[5:]
    assert PairOrder(6, seed=1, epochs=1).peek(0, 6) != stream[:6]


def test_epochs_end_the_run_and_budget_tokens_stop_it(tmp_path):
    """6 pairs, 4 per step, 2 epochs: the stream has 12 pairs, so the run ends after 3 steps
    (4 + 4 + 4) although steps=10, with a checkpoint of the last step; a token budget of 1 stops
    after the first step."""
    cfg = pref_cfg(tmp_path / "a", data=PreferenceDataConfig(num_train=6, num_heldout=2), pairs_per_step=4,
                   micro_batch_size=4, epochs=2, steps=10, save_every=10)  # fmt: skip
    run = train(cfg)
    rows = metric_rows(run)
    assert sorted(rows) == [1, 2, 3]
    assert [rows[s]["data/pairs"] for s in (1, 2, 3)] == [4, 4, 4] and rows[3]["data/epoch"] == 2.0
    assert checkpoint.latest(run).name == "step_000003"
    assert (run / "final" / "model.safetensors").exists()
    budget = train(pref_cfg(tmp_path / "b", steps=5, budget_tokens=1))
    rows = metric_rows(budget)
    assert sorted(rows) == [1] and rows[1]["budget/tokens_total"] == rows[1]["data/response_tokens"]


def test_ctrl_c_then_resume_matches_uninterrupted(tmp_path, monkeypatch):
    """Run A: 4 steps of 4 pairs straight. Run B: Ctrl-C right after step 3 drew its pairs (the data
    order has moved on), with save_every=10: the scaffold saves step 2, the last finished step,
    with the data order as it was then; resumed, B's steps 3-4 and final weights equal A's exactly."""
    kw = dict(steps=4, pairs_per_step=4, micro_batch_size=2, save_every=10)
    run_a = train(pref_cfg(tmp_path / "a", **kw))

    real = PairOrder.next_pairs
    calls = {"n": 0}

    def interrupting(self, count):
        out = real(self, count)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(PairOrder, "next_pairs", interrupting)
    run_b = interrupted_then_resumed(train, pref_cfg(tmp_path / "b", **kw), undo=monkeypatch.undo)
    rows_a, rows_b = metric_rows(run_a), metric_rows(run_b)
    assert sorted(rows_b) == [1, 2, 3, 4]
    for step in (3, 4):
        for k in COMPARED:
            assert rows_a[step][k] == rows_b[step][k], (step, k)
    fa, fb = (load_file(str(r / "final" / "model.safetensors")) for r in (run_a, run_b))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "anypo.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """`anypo train dpo`: run A 4 steps straight; run B killed with SIGKILL once its step-2
    checkpoint exists, then `anypo train --resume`: same metrics after the resume point and
    identical final weights (same seed, CPU, one thread)."""

    def args(out: Path) -> list[str]:
        return [
            "train", "dpo", "--model.name", "tiny", "--data.num-train", "24", "--data.num-heldout", "4",
            "--steps", "4", "--pairs-per-step", "4", "--micro-batch-size", "2", "--lr", "1e-3",
            "--eval-every", "0", "--save-every", "1", "--no-progress", "--threads", "1", "--out-dir", str(out),
        ]  # fmt: skip

    a = _cli(args(tmp_path / "a"))  # A and B side by side (one thread each): independent processes
    b = _cli(args(tmp_path / "b"))
    deadline, run_b = time.time() + 600, None
    while time.time() < deadline:
        dirs = list((tmp_path / "b").glob("dpo-*"))
        if dirs and (ck := checkpoint.latest(dirs[0])) is not None and ck.name >= "step_000002":
            run_b = dirs[0]
            break
        assert b.poll() is None, "run B finished before it could be killed"
        time.sleep(0.02)
    os.kill(b.pid, signal.SIGKILL)
    b.wait()
    killed_at = int(checkpoint.latest(run_b).name.split("_")[1])
    assert killed_at < 4, "run B was not interrupted"
    r = _cli(["train", "--resume", str(run_b)])
    assert a.wait(timeout=600) == 0, a.stderr.read().decode()[-3000:]
    run_a = next((tmp_path / "a").iterdir())
    assert r.wait(timeout=600) == 0, r.stderr.read().decode()[-3000:]
    rows_a, rows_b = metric_rows(run_a), metric_rows(run_b)
    assert sorted(rows_b) == [1, 2, 3, 4]
    for step in range(killed_at + 1, 5):
        for k in COMPARED:
            assert rows_a[step][k] == rows_b[step][k], (step, k)
    fa, fb = (load_file(str(r / "final" / "model.safetensors")) for r in (run_a, run_b))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_evaluation_on_heldout_pairs_and_prompts(tmp_path):
    """eval_every=1: before training the policy is the reference, so the held-out DPO loss is
    log 2 and every implicit reward 0; built-in pairs also give pass@1 on held-out prompts."""
    cfg = pref_cfg(
        tmp_path, eval_every=1, eval_pairs=4, eval_prompts=2, pairs_per_step=4, micro_batch_size=4,
        eval_sampling=SamplingConfig(temperature=0.7, max_new_tokens=6),
    )  # fmt: skip
    run = train(cfg)
    rows = metric_rows(run)
    assert sorted(rows) == [0, 1, 2]
    assert rows[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[0]["eval/reward_margin"] == pytest.approx(0.0, abs=1e-5)
    for r in rows.values():
        assert {"eval/loss", "eval/accuracy", "eval/logps_chosen", "eval/pass@1"} <= set(r)
    assert rows[2]["eval/loss"] != rows[0]["eval/loss"]
    readme = (run / "README.md").read_text()
    assert "eval/loss" in readme and "Final training loss" in readme


def test_config_problems_are_listed_before_loading(tmp_path):
    cfg = pref_cfg(tmp_path, lr=0.0, pairs_per_step=0, epochs=0, data=PreferenceDataConfig(name="nope"),
                   precision="fp8")  # fmt: skip
    with pytest.raises(UserError) as info:
        check_pref_config(cfg)
    text = str(info.value)
    for needle in ("--lr is 0.0", "--pairs-per-step is 0", "--epochs is 0", "--data.name is 'nope'", "--precision"):
        assert needle in text, needle
    with pytest.raises(UserError, match="not a registered preference_loss"):
        check_pref_config(pref_cfg(tmp_path, algo=PrefAlgoConfig(loss=SamplingConfig())))


def test_cli_reports_a_malformed_pair_as_a_user_error(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "Q?"}))
    rc = cli.main(["train", "dpo", "--smoke", "--data.name", str(path), "--data.num-heldout", "0",
                   "--out-dir", str(tmp_path)])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "anypo: error:" in err and "bad.jsonl, row 2: field 'chosen': missing" in err
