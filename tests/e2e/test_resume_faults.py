"""Resume after SIGKILL gives the same run; faults are skipped and counted, never fatal to what was trained."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anypo import checkpoint, registry
from anypo.config import TrainConfig
from anypo.runs import to_jsonable
from anypo.train import TrainingError, train

TOY = str(Path(__file__).with_name("toy_rewards.py"))

COMPARED = ("reward/mean", "reward/std", "loss/total", "policy/loss", "train/grad_norm", "kl/ref")


def _rows(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _cli_args(cfg: TrainConfig) -> list[str]:
    return [
        "--model.name", "tiny", "--task.num-train", "64", "--task.num-heldout", "8",
        "--sampling.max-new-tokens", "8", "--rewards", f"{TOY}:char_sum", "--steps", str(cfg.steps),
        "--prompts-per-step", "2", "--samples-per-prompt", "4", "--micro-batch-size", "4", "--lr", "1e-3",
        "--eval-every", "0", "--save-every", "1", "--no-progress", "--out-dir", cfg.out_dir, "--threads", "1",
    ]  # fmt: skip


def _run_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "anypo.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, make_cfg):
    """Run A: 4 steps straight. Run B: killed with SIGKILL once its step-2 checkpoint exists, then
    resumed. Steps after the resume point must have the same rewards and losses, and the final
    weights must be identical (same seed, CPU, one thread)."""
    # A and B run side by side (one thread each): they are independent processes
    cfg = make_cfg(steps=4, out_dir=str(tmp_path / "a"))
    a = _run_cli(["train", "grpo", *_cli_args(cfg)])
    cfg_b = make_cfg(steps=4, out_dir=str(tmp_path / "b"))
    b = _run_cli(["train", "grpo", *_cli_args(cfg_b)])
    deadline = time.time() + 600
    run_b = None
    while time.time() < deadline:
        dirs = list((tmp_path / "b").glob("grpo-*"))
        if dirs and checkpoint.latest(dirs[0]) is not None and checkpoint.latest(dirs[0]).name >= "step_000002":
            run_b = dirs[0]
            break
        assert b.poll() is None, "run B finished before it could be killed"
        time.sleep(0.02)
    os.kill(b.pid, signal.SIGKILL)
    b.wait()
    killed_at = int(checkpoint.latest(run_b).name.split("_")[1])
    assert killed_at < 4, "run B was not interrupted"
    r = _run_cli(["train", "--resume", str(run_b)])
    assert a.wait(timeout=600) == 0, a.stderr.read().decode()[-3000:]
    run_a = next((tmp_path / "a").iterdir())
    assert r.wait(timeout=600) == 0, r.stderr.read().decode()[-3000:]

    rows_a, rows_b = _rows(run_a), _rows(run_b)
    assert sorted(rows_b) == [1, 2, 3, 4]
    for step in range(killed_at + 1, 5):
        for k in COMPARED:
            if k in rows_a[step]:
                assert rows_a[step][k] == rows_b[step][k], (step, k)
    fa = load_file(str(run_a / "final" / "model.safetensors"))
    fb = load_file(str(run_b / "final" / "model.safetensors"))
    assert fa.keys() == fb.keys()
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_raising_and_nan_rewards_are_counted(make_cfg):
    cfg = make_cfg(steps=1, rewards=(f"{TOY}:raises", f"{TOY}:nan_reward", f"{TOY}:char_sum"))
    run = train(cfg)
    row = _rows(run)[1]
    assert row["reward/errors"] == 2 * 8  # two failing terms x 2 prompts x 4 samples
    assert row["train/skipped_updates"] == 0


def test_nan_loss_skips_update_then_stops_with_checkpoint_intact(make_cfg, monkeypatch):
    """Step 1 trains normally; from step 2 on the loss is NaN: updates are skipped (weights untouched)
    and after max_bad_updates=2 in a row training stops with a clear error; step 2's checkpoint
    holds the step-1 weights."""
    reg = registry.registry("policy_loss")
    real_fn_for = reg.fn_for
    calls = {"n": 0}

    def fn_for(cfg):
        fn = real_fn_for(cfg)

        def poisoned(out, batch, c):
            res = fn(out, batch, c)
            calls["n"] += 1
            if calls["n"] > 2:  # 2 micro-batches per step: poison from step 2
                res.loss = res.loss * float("nan")
            return res

        return poisoned

    monkeypatch.setattr(reg, "fn_for", fn_for)
    cfg = make_cfg(steps=5, max_bad_updates=2)
    with pytest.raises(TrainingError, match="non-finite") as err:
        train(cfg)
    run = Path(str(err.value).split("last good checkpoint is ")[1].split(". ")[0]).parents[1]
    rows = _rows(run)
    assert rows[1]["train/skipped_updates"] == 0
    assert rows[2]["train/skipped_updates"] == 1 and rows[3]["train/skipped_updates"] == 1
    t1 = checkpoint.load(run / "checkpoints" / "step_000002")[0]["policy"]
    t3 = checkpoint.load(checkpoint.latest(run))[0]["policy"]
    assert all(torch.equal(t1[k], t3[k]) for k in t1)  # skipped updates left the weights alone


def test_long_prompts_are_skipped_and_counted(make_cfg, tmp_path):
    data = tmp_path / "data.jsonl"
    # distinct rows: the held-out carve-out removes every copy of a held-out prompt
    rows = [{"prompt": f"What is {i}+1?", "answer": str(i + 1)} for i in range(6)]
    rows += [{"prompt": "word " * 400 + str(i), "answer": "1"} for i in range(2)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from anypo.tasks import TaskConfig

    cfg = make_cfg(steps=1, task=TaskConfig(name=str(data), num_heldout=1), max_prompt_tokens=200)
    run = train(cfg)
    assert _rows(run)[1]["data/skipped_long_prompts"] == 2


def test_corrupted_checkpoint_on_resume_is_a_clear_error(make_cfg):
    run = train(make_cfg(steps=1))
    ck = checkpoint.latest(run)
    blob = bytearray((ck / "policy.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (ck / "policy.safetensors").write_bytes(bytes(blob))
    from anypo.config import from_jsonable

    cfg = from_jsonable(json.loads((run / "config.json").read_text()))
    assert to_jsonable(cfg) == json.loads((run / "config.json").read_text())  # config round-trips
    with pytest.raises(checkpoint.CheckpointError, match="policy.safetensors is corrupted"):
        train(cfg, resume=run)


def test_ctrl_c_keeps_the_last_finished_step(make_cfg, tmp_path):
    """A KeyboardInterrupt during step 3's rollout (from the reward) checkpoints step 2, the last
    finished step, although save_every would not have saved it; the run then resumes from it."""
    reward = tmp_path / "interrupting.py"
    reward.write_text(
        "calls = 0\n"
        "def reward(sample):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls == 2 * 8 + 1:  # first sample of step 3 (2 prompts x 4 samples per step)\n"
        "        raise KeyboardInterrupt\n"
        "    return (sum(map(ord, sample.completion)) % 11) / 10\n"
    )
    cfg = make_cfg(steps=4, save_every=10, rewards=(f"{reward}:reward",))
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    (run,) = [p for p in Path(cfg.out_dir).iterdir() if p.name.startswith("grpo-")]
    assert checkpoint.latest(run).name == "step_000002"
    assert sorted(_rows(run)) == [1, 2]
    train(cfg, resume=run)
    assert sorted(_rows(run)) == [1, 2, 3, 4]
