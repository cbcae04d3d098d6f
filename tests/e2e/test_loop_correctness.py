"""The online loop's mechanisms that every preset inherits: whole-group mini-batches, off-policy
updates that make ratio-based losses act, micro-batch-independent metrics, reward errors kept out of
training, Dr. GRPO's constant normaliser, no AdamW step without a gradient, and the needs of bf16 and
the critic. Each test failed on the loop before the fix it guards (see the docstrings)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from anypo import checkpoint, registry
from anypo.algorithms import PRESETS
from anypo.registry import get
from anypo.rollout import drop_reward_errors
from anypo.train import Context, train
from anypo.types import RolloutBatch

TOY = str(Path(__file__).with_name("toy_rewards.py"))


def _rows(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _with(preset: str, **algo_kw):
    return dataclasses.replace(PRESETS[preset].build(), **algo_kw)


# ---- 1. mini-batches of whole groups -----------------------------------------------------------


def test_minibatches_are_whole_groups(make_cfg, monkeypatch):
    """B = 4 prompts x G = 4, ``minibatch_prompts=1``, 2 epochs: each epoch makes 4 optimizer steps,
    each on exactly one whole group (4 rows of one group id), and every group once per epoch. The
    old loop chunked a permutation of sequences, so a mini-batch mixed rows of several groups."""
    seen: list[list[int]] = []
    real = Context._minibatch_step

    def spy(self, mini, reductions):
        seen.append(mini.group_ids.tolist())
        return real(self, mini, reductions)

    monkeypatch.setattr(Context, "_minibatch_step", spy)
    cfg = make_cfg(algo=_with("grpo", minibatch_prompts=1, ppo_epochs=2), steps=1, prompts_per_step=4)
    run = train(cfg)
    assert len(seen) == 2 * 4
    for ids in seen:
        assert len(ids) == 4 and len(set(ids)) == 1  # one whole group of G = 4
    for epoch in (seen[:4], seen[4:]):
        assert sorted(ids[0] for ids in epoch) == [0, 1, 2, 3]  # every group once per pass
    assert _rows(run)[1]["train/optimizer_steps"] == 8


def test_minibatch_size_larger_than_batch_is_one_step(make_cfg):
    """DAPO's paper size (32 prompts) at B = 2: one mini-batch, one on-policy optimizer step."""
    assert PRESETS["dapo"].build().minibatch_prompts == 32
    run = train(make_cfg(algo=_with("dapo", sampler=None), steps=1))
    assert _rows(run)[1]["train/optimizer_steps"] == 1


# ---- 2. ratio-based losses act off-policy ------------------------------------------------------


@pytest.mark.parametrize(("preset", "metric"), [("sapo", "policy/gate_weight"), ("cispo", "policy/ratio_max")])
def test_off_policy_minibatches_move_the_ratio(make_cfg, preset, metric):
    """With one update per rollout the ratio is exactly 1, so SAPO's gate weight ``4 p (1 - p) r`` is
    1 and CISPO's clipped weight is 1: the losses equal plain policy gradient. With two whole-group
    mini-batches the second one sees a moved policy: the step's mean gate weight drops below 1 and
    the largest token ratio leaves 1."""
    on = _rows(train(make_cfg(algo=_with(preset, minibatch_prompts=None), steps=1, lr=1e-2)))[1]
    off = _rows(train(make_cfg(algo=_with(preset, minibatch_prompts=1), steps=1, lr=1e-2)))[1]
    assert on["policy/ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert on["policy/ratio_min"] == pytest.approx(1.0, abs=1e-5)
    if metric == "policy/gate_weight":
        assert on[metric] == pytest.approx(1.0, abs=1e-5)
        assert off[metric] < 1.0 - 1e-4
    assert off["policy/ratio_max"] > 1.0 + 1e-4 or off["policy/ratio_min"] < 1.0 - 1e-4


# ---- 3. logged metrics do not depend on micro_batch_size ---------------------------------------

_TIMING = ("time/", "throughput/", "memory/")


@pytest.mark.parametrize("preset", ["grpo", "gspo", "ppo"])
def test_metrics_do_not_depend_on_micro_batch_size(make_cfg, preset):
    """Step 1 of the same run with micro-batches of 8, 4 and 1 sequences logs the same value for every
    metric (up to float32 summation order); GSPO covers sequence-level means, PPO the critic's loss and
    grpo the KL term. The old loop logged partial sums weighted by the micro-batch's share, so with 2
    micro-batches ``policy/loss`` and ``kl/ref`` read half the true value."""
    rows = [
        _rows(train(make_cfg(algo=PRESETS[preset].build(), steps=1, micro_batch_size=mb, name=f"{preset}-{mb}")))[1]
        for mb in (8, 4, 1)
    ]
    keys = {k for k in rows[0] if not k.startswith(_TIMING)}
    assert {"policy/loss", "loss/total", "policy/entropy", "train/grad_norm"} <= keys
    for r in rows[1:]:
        assert {k for k in r if not k.startswith(_TIMING)} == keys
        for k in keys:
            assert r[k] == pytest.approx(rows[0][k], rel=1e-4, abs=1e-6), k


def test_loss_total_is_the_sum_of_its_terms(make_cfg):
    """grpo's total loss is the policy loss plus 0.04 x the KL estimate, whatever the split."""
    r = _rows(train(make_cfg(algo=PRESETS["grpo"].build(), steps=2, micro_batch_size=2)))[2]
    assert r["loss/total"] == pytest.approx(r["policy/loss"] + 0.04 * r["kl/ref"], rel=1e-4, abs=1e-7)


# ---- 4. reward errors are dropped, not trained on as wrong answers -----------------------------


def test_failed_reward_is_out_of_the_group_statistics():
    """The review's example: rewards [1, 1, 0, 0] in one group, the second sample's reward failed
    (scored 0 by the runner). Kept, GRPO gives it and its group z-scores of [1, 0, 0, 0]:
    mean 1/4, unbiased std 1/2, advantages [1.5, -0.5, -0.5, -0.5]. Dropped, the group is [1, 0, 0]:
    mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = 1/sqrt(3), so the correct answer gets
    (2/3) sqrt(3) = 1.1547 and the wrong ones -(1/3) sqrt(3) = -0.57735."""
    b = RolloutBatch(
        response_mask=torch.ones(4, 2),
        group_ids=torch.zeros(4, dtype=torch.long),
        rewards=torch.tensor([1.0, 0.0, 0.0, 0.0]),
        extras={"reward_error": [False, True, False, False], "text": ["a", "b", "c", "d"]},
    )
    kept, dropped = drop_reward_errors(b)
    assert dropped == 1 and kept.extras["text"] == ["a", "c", "d"]
    fn, Cfg = get("advantage", "grpo")
    A = fn(kept, Cfg(eps=0.0))[:, 0]
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(A, torch.tensor([2 * s3 / 3, -s3 / 3, -s3 / 3]))


def test_reward_errors_are_counted_and_dropped(make_cfg, tmp_path, caplog):
    """A reward that raises on every second call: half of the 8 samples are dropped (not trained on),
    counted as reward/error_samples, and the run warns once that more than 10% failed."""
    flaky = tmp_path / "flaky.py"
    flaky.write_text(
        "calls = 0\n"
        "def reward(sample):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls % 2 == 0:\n"
        "        raise TimeoutError('verifier timed out')\n"
        "    return (sum(map(ord, sample.completion)) % 11) / 10\n"
    )
    with caplog.at_level("WARNING"):
        run = train(make_cfg(steps=2, rewards=(f"{flaky}:reward",)))
    rows = _rows(run)
    for r in rows.values():
        assert r["reward/error_samples"] == 4 and r["reward/errors"] == 4
        assert r["rollout/trained_seqs"] == 4
    assert sum("the reward failed on 4 of 8 samples" in m for m in caplog.messages) == 1


# ---- 5. Ctrl-C inside a rollout resumes exactly ------------------------------------------------


def test_ctrl_c_inside_rollout_resumes_like_an_uninterrupted_run(make_cfg, tmp_path):
    """Run A: 4 steps. Run B: a KeyboardInterrupt from the reward during step 3's rollout, after the
    sampler has drawn step 3's prompts; the handler checkpoints step 2, the run resumes. Steps 3 and 4
    of B must train on the same prompts with the same rewards as A. Before the fix the checkpoint held
    the sampler state after step 3's draw, so B's step 3 trained on A's step-4 prompts."""
    body = "    return (sum(map(ord, sample.completion)) % 11) / 10\n"
    plain = tmp_path / "plain.py"
    plain.write_text("def reward(sample):\n" + body)
    stopping = tmp_path / "stopping.py"
    stopping.write_text(
        "calls = 0\n"
        "def reward(sample):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls == 2 * 8 + 3:  # inside step 3's rollout (2 prompts x 4 samples per step)\n"
        "        raise KeyboardInterrupt\n" + body
    )
    a = train(make_cfg(steps=4, save_every=10, out_dir=str(tmp_path / "a"), rewards=(f"{plain}:reward",)))
    cfg_b = make_cfg(steps=4, save_every=10, out_dir=str(tmp_path / "b"), rewards=(f"{stopping}:reward",))
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b)
    (b,) = list((tmp_path / "b").iterdir())
    assert checkpoint.latest(b).name == "step_000002"
    train(cfg_b, resume=b)

    def prompts(run: Path) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for line in (run / "samples.jsonl").read_text().splitlines():
            r = json.loads(line)
            out.setdefault(r["step"], []).append(r["prompt_index"])
        return out

    assert prompts(a) == prompts(b)
    ra, rb = _rows(a), _rows(b)
    for step in (3, 4):
        for k in ("reward/mean", "policy/loss", "train/grad_norm"):
            assert ra[step][k] == rb[step][k], (step, k)


# ---- 6. Dr. GRPO divides by the generation budget ----------------------------------------------


def test_dr_grpo_normaliser_is_max_new_tokens(make_cfg, monkeypatch):
    """Dr. GRPO's ``seq_mean_token_sum_norm`` must divide by the constant generation budget L_max =
    max_new_tokens = 8 (not by the longest response of the mini-batch, which the engine trims to)."""
    reg = registry.registry("policy_loss")
    real_fn_for = reg.fn_for
    lengths: list[float] = []

    def fn_for(cfg):
        fn = real_fn_for(cfg)

        def spy(out, batch, c):
            lengths.append(batch.scale().norm_length)
            return fn(out, batch, c)

        return spy

    monkeypatch.setattr(reg, "fn_for", fn_for)
    train(make_cfg(algo=PRESETS["dr_grpo"].build(), steps=2))
    assert lengths and set(lengths) == {8.0}


# ---- 7. no AdamW step without a gradient -------------------------------------------------------


def test_zero_gradient_step_leaves_the_weights(make_cfg, tmp_path):
    """Step 1 has a reward spread (a real update); from step 2 the reward is constant, so every group
    is all-equal, every advantage is exactly 0 and the policy gradient is 0 (no KL in dr_grpo). AdamW
    would still move the weights by its momentum; the loop must skip the step and count it."""
    r = tmp_path / "then_constant.py"
    r.write_text(
        "calls = 0\n"
        "def reward(sample):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    return (sum(map(ord, sample.completion)) % 11) / 10 if calls <= 8 else 1.0\n"
    )
    run = train(make_cfg(algo=PRESETS["dr_grpo"].build(), steps=3, rewards=(f"{r}:reward",)))
    rows = _rows(run)
    assert rows[1]["train/skipped_no_signal"] == 0 and rows[1]["train/optimizer_steps"] == 1
    assert rows[2]["train/skipped_no_signal"] == 1 and rows[2]["train/optimizer_steps"] == 0
    w1 = checkpoint.load(run / "checkpoints" / "step_000002")[0]["policy"]  # after steps 1-2
    w3 = checkpoint.load(run / "checkpoints" / "step_000003")[0]["policy"]
    assert all(torch.equal(w1[k], w3[k]) for k in w1)


# ---- 8. bf16 old log-probs, the critic's gradient, on-policy-only losses -----------------------


def test_bf16_old_logprobs_come_from_the_training_forward(make_cfg):
    """Under bf16 autocast the engine's cached decode and the packed training forward round
    differently, so the engine's log-probs are not the training forward's: on-policy the loss takes
    its own forward's as the old ones (the first ratio is exactly 1), keeps the engine's as the
    rollout log-probs and logs the difference; with ``recompute_old_logprobs`` a learner pass fills
    them before the update instead."""
    ctx = Context.build(make_cfg(precision="bf16"), Path(make_cfg().out_dir))
    batch, m = ctx.rollout(1)
    m = ctx.learn(batch, m, 1)  # fill_needs, advantages, the update
    assert batch.old_logprobs is None and batch.rollout_logprobs is not None
    assert m["rollout/engine_logprob_abs_diff"] > 0 and m["train/optimizer_steps"] == 1
    ctx = Context.build(make_cfg(precision="bf16", recompute_old_logprobs=True, name="b"), Path(make_cfg().out_dir))
    batch, m = ctx.rollout(1)
    ctx.fill_needs(batch, m)
    assert "rollout/engine_logprob_abs_diff" in m and batch.old_logprobs is not None


def test_non_finite_critic_gradient_skips_the_update(make_cfg, monkeypatch):
    """A NaN in the critic's gradient alone (the loss is finite: a hook poisons the head's gradient)
    skips the step, counted, and the policy does not move. The old loop checked only the policy's
    gradient and stepped the critic into NaN."""
    import anypo.train as loop

    class PoisonedCritic(loop.Critic):
        def __init__(self, policy, *args, **kwargs):
            super().__init__(policy, *args, **kwargs)
            self.head.weight.register_hook(lambda g: g * float("nan"))

    monkeypatch.setattr(loop, "Critic", PoisonedCritic)
    cfg = make_cfg(algo=_with("ppo", ppo_epochs=1), steps=1, max_bad_updates=5, save_every=1)
    run = train(cfg)
    assert _rows(run)[1]["train/skipped_updates"] == 1
    from anypo.models import load_model

    init = load_model("tiny", seed=cfg.seed).state_dict()
    final = checkpoint.load(checkpoint.latest(run))[0]["policy"]
    assert all(torch.equal(final[k], init[k]) for k in final if k in init)


def test_reinforce_declares_on_policy_only():
    """The plain REINFORCE gradient ``-A grad log pi`` is only unbiased on the current policy's samples."""
    assert PRESETS["rloo"].build().policy_loss.requires_on_policy
    assert not PRESETS["grpo"].build().policy_loss.requires_on_policy
