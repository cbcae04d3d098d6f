"""Inputs the online loop provides to the parts that declare them (beyond those of
test_loop_features.py): per-difficulty held-out pass@k, advantage metrics, per-mini-batch token
selections, and the behaviour policy's tempered / proxy / mean log-probs of the old-log-prob pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from anypo.tasks import TaskConfig
from tiny_runs import interrupted_then_resumed, metric_rows

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


# ---- 3. per-mini-batch token selections (Clip-Cov, KL-Cov) -----------------------------------------


def _wide_clip_cov(**kw):
    """The clip_cov preset with a band that holds every token and 30% of them detached, so the random
    draw matters at the tiny model's scale."""
    import dataclasses

    from anypo.algorithms import PRESETS

    algo = PRESETS["clip_cov"].build()
    loss = dataclasses.replace(algo.policy_loss, cov_low=-1e9, cov_high=1e9, frac=0.3)
    return dataclasses.replace(algo, policy_loss=loss, sampler=None, **kw)


def test_minibatch_prepare_sees_each_optimizer_steps_weights(make_cfg, monkeypatch):
    """2 prompts, one mini-batch per prompt, 2 epochs: prepare_minibatch runs 4 times, once per
    mini-batch and before its micro-batches. The log-probs it gets are those of the weights of that
    optimizer step, recomputed here with an independent padded forward of the model at call time:
    at the first mini-batch they are the stored old log-probs (no step yet), later they differ from
    the old ones (lr 1e-2 moved the weights). Its seeds are distinct, and a second identical run
    passes the same seeds and detaches the same tokens."""
    import torch

    from anypo.losses.cov import CLIP_COV_DETACHED, ClipCov
    from anypo.policy import response_logprobs
    from anypo.train import Context, train

    calls = []
    real = ClipCov.prepare_minibatch

    def spy(self, mini, logprobs, seed):
        with torch.no_grad():
            want = response_logprobs(Context.current.model, mini, 1.0, pack=False).logprobs  # temperature 1
        calls.append((mini.group_ids.tolist(), logprobs.clone(), want, mini.old_logprobs.clone(), seed))
        real(self, mini, logprobs, seed)
        calls[-1] += (mini.extras[CLIP_COV_DETACHED].nonzero().tolist(),)

    real_build = Context.build.__func__

    def build(cls, cfg, run_dir):
        Context.current = real_build(cls, cfg, run_dir)
        return Context.current

    monkeypatch.setattr(Context, "current", None, raising=False)
    monkeypatch.setattr(ClipCov, "prepare_minibatch", spy)
    monkeypatch.setattr(Context, "build", classmethod(build))
    cfg = make_cfg(algo=_wide_clip_cov(minibatch_prompts=1, ppo_epochs=2), steps=1, lr=1e-2)
    train(cfg)
    first = list(calls)
    assert len(first) == 4 and all(len(set(c[0])) == 1 for c in first)  # one whole group each
    for i, (_, lp, want, old, _seed, _det) in enumerate(first):
        torch.testing.assert_close(lp, want, atol=2e-5, rtol=0)  # padding is 0 in both
        if i == 0:
            torch.testing.assert_close(lp, old)  # the stored old log-probs, no extra pass
        else:
            assert (lp - old).abs().max() > 1e-4  # recomputed under moved weights
    assert len({c[4] for c in first}) == 4
    calls.clear()
    train(make_cfg(algo=_wide_clip_cov(minibatch_prompts=1, ppo_epochs=2), steps=1, lr=1e-2))
    assert [c[4] for c in calls] == [c[4] for c in first] and [c[5] for c in calls] == [c[5] for c in first]
    assert all(c[5] for c in first)  # something was detached each time


def test_minibatch_selections_resume_exactly(make_cfg, tmp_path):
    """Run A: 3 steps of the wide Clip-Cov (random draws over every token), 2 mini-batches per step.
    Run B: interrupted inside step 3's rollout and resumed from the step-2 checkpoint. The draws are
    seeded by (run seed, step, mini-batch index), so B's step 3 detaches the same tokens as A's: the
    same loss, detached share and gradient norm."""
    from anypo.train import train

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
    kw = {"algo": _wide_clip_cov(minibatch_prompts=1), "steps": 3, "save_every": 10, "lr": 1e-2}
    a = train(make_cfg(out_dir=str(tmp_path / "a"), rewards=(f"{plain}:reward",), **kw))
    b = interrupted_then_resumed(train, make_cfg(out_dir=str(tmp_path / "b"), rewards=(f"{stopping}:reward",), **kw))
    ra, rb = metric_rows(a), metric_rows(b)
    assert ra[3]["clip_cov/detached_frac"] > 0
    for k in ("policy/loss", "clip_cov/detached_frac", "train/grad_norm", "reward/mean"):
        assert ra[3][k] == rb[3][k], k


# ---- 4. the behaviour policy's extra inputs (DCPO, ROVER off-policy, Lp-Reg) ------------------------


def _unpadded_logits(ctx, batch, i):
    """[L, V] raw logits predicting row i's L response tokens and the tokens, from one plain forward."""
    import torch

    prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
    L = int(batch.response_mask[i].sum())
    resp = batch.response_ids[i, :L].tolist()
    with torch.no_grad():
        z = ctx.model(torch.tensor([prompt + resp])).logits[0, len(prompt) - 1 : -1].double()
    return z, torch.tensor(resp)


def test_dcpo_gets_the_behaviour_logprobs_at_the_states_temperatures(make_cfg):
    """The dcpo preset: before the advantages the loop fills extras['old_logprobs_at_T<t>'] for the t
    the part asks for given its state: (1.2, 1.0) at H_prev = 0, (0.8, 1.0) once H_prev > H0 = 0.5.
    Each equals z_o / t - logsumexp(z / t) of the raw logits of a plain forward; the engine's
    old log-probs stay (on-policy, fp32: nothing is recomputed)."""
    import torch

    from anypo.algorithms import PRESETS
    from anypo.train import Context

    cfg = make_cfg(algo=PRESETS["dcpo"].build())
    ctx = Context.build(cfg, Path(cfg.out_dir))
    for h_prev, temps in ((0.0, (1.2, 1.0)), (0.9, (0.8, 1.0))):
        ctx.part_states["advantage"]["h_prev"] = h_prev
        batch, m = ctx.rollout(1)
        engine = batch.old_logprobs.clone()
        ctx.fill_needs(batch, m)
        assert torch.equal(batch.old_logprobs, engine) and batch.rollout_logprobs is None
        assert sorted(k for k in batch.extras if k.startswith("old_logprobs_at_T")) == sorted(
            f"old_logprobs_at_T{t:g}" for t in temps
        )
        for i in range(batch.num_seqs):
            z, o = _unpadded_logits(ctx, batch, i)
            for t in temps:
                want = z.gather(-1, o[:, None]).squeeze(-1) / t - torch.logsumexp(z / t, -1)
                got = batch.extras[f"old_logprobs_at_T{t:g}"][i, : len(o)].double()
                torch.testing.assert_close(got, want, atol=3e-5, rtol=0)


def test_rover_off_policy_gets_the_behaviour_mean_logprobs(make_cfg):
    """rover with old_means='batch' (the official 4-update regime; here one group per mini-batch):
    extras['old_mean_logprobs'] = mean_v (z_v / T) - logsumexp(z / T) at the sampling temperature
    (0.7 here) for every response token, and a 1-step run trains with it (finite, weights change)."""
    import dataclasses
    import json

    import torch

    from anypo.algorithms import PRESETS
    from anypo.engines.base import SamplingConfig
    from anypo.train import Context, train

    algo = dataclasses.replace(PRESETS["rover"].build(old_means="batch"), minibatch_prompts=1)
    cfg = make_cfg(algo=algo, sampling=SamplingConfig(max_new_tokens=8, temperature=0.7))
    ctx = Context.build(cfg, Path(cfg.out_dir))
    batch, m = ctx.rollout(1)
    ctx.fill_needs(batch, m)
    for i in range(batch.num_seqs):
        z, o = _unpadded_logits(ctx, batch, i)
        want = (z / 0.7).mean(-1) - torch.logsumexp(z / 0.7, -1)
        torch.testing.assert_close(batch.extras["old_mean_logprobs"][i, : len(o)].double(), want, atol=3e-5, rtol=0)
    row = json.loads((train(cfg) / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train/optimizer_steps"] == 2 and all(v == v for v in row.values() if isinstance(v, float))


def test_lp_reg_gets_the_min_p_proxy_at_its_positions(make_cfg):
    """The lp_reg preset (neg_frac raised to 0.5 so the tiny batch selects several tokens): after the
    advantages the loop fills extras['lp_reg_proxy_logprobs'] exactly at lp_reg_select's positions,
    NaN elsewhere, with lq = z'_o - logsumexp(z') where z' keeps z_v iff softmax(z)_v >= 0.02 max
    softmax(z) and is -1e4 elsewhere (temperature 1), z the behaviour policy's raw logits."""
    import dataclasses

    import torch

    from anypo.algorithms import PRESETS
    from anypo.regularizers.lp_reg import lp_reg_select
    from anypo.train import Context

    algo = PRESETS["lp_reg"].build()
    reg = dataclasses.replace(algo.regularizers[0], neg_frac=0.5)
    cfg = make_cfg(algo=dataclasses.replace(algo, regularizers=(reg,)))
    ctx = Context.build(cfg, Path(cfg.out_dir))
    batch, m = ctx.rollout(1)
    ctx.fill_needs(batch, m)
    batch.advantages = ctx.advantage_fn(batch, algo.advantage)
    ctx.fill_proxy(batch)
    lq = batch.extras["lp_reg_proxy_logprobs"]
    pos = lp_reg_select(batch.old_logprobs, batch.advantages, batch.response_mask, reg)
    assert int(pos.sum()) > 1 and torch.equal(~torch.isnan(lq), pos)
    for i, t in pos.nonzero().tolist():
        z, o = _unpadded_logits(ctx, batch, i)
        p = torch.softmax(z[t], -1)
        zz = torch.where(p >= 0.02 * p.max(), z[t], torch.full_like(z[t], -1e4))
        want = float(zz[o[t]] - torch.logsumexp(zz, -1))
        assert float(lq[i, t]) == pytest.approx(want, rel=1e-6, abs=3e-5)


# ---- 5. the step-start policy's full distributions (MDPO's exact KL) -----------------------------


def test_mdpo_gets_the_step_start_distributions_in_every_update(make_cfg, monkeypatch):
    """mdpo_lm (5 full-batch updates per step, exact KL): in each of the 5 updates every micro-batch
    carries extras['old_full_logprobs'] [Nm, Tm, V] = log_softmax(z / T) of the weights the step
    began with, recomputed here by a plain unpadded forward of a copy of those weights; the weights
    themselves move (lr 1e-2), so from the second update on the KL to pi_k is > 0."""
    import copy
    import json

    import torch

    from anypo.algorithms import PRESETS
    from anypo.rollout.old_pass import StepAnchor
    from anypo.train import train

    snaps, seen = [], []
    real_sync, real_fill = StepAnchor.sync, StepAnchor.fill

    def sync(self, model):
        snaps.append(copy.deepcopy(model).eval())
        real_sync(self, model)

    def fill(self, micro, temperature, pack):
        real_fill(self, micro, temperature, pack)
        seen.append((micro.select(slice(0, 1)), micro.extras["old_full_logprobs"][0].clone(), temperature))

    monkeypatch.setattr(StepAnchor, "sync", sync)
    monkeypatch.setattr(StepAnchor, "fill", fill)
    run = train(make_cfg(algo=PRESETS["mdpo_lm"].build(total_iterations=2), steps=1, lr=1e-2))
    assert len(snaps) == 1 and len(seen) == 5 * 2  # 5 updates x 2 micro-batches of 4
    for mb, full, temperature in seen:
        prompt = mb.prompt_ids[0][mb.prompt_mask[0].bool()].tolist()
        L = int(mb.response_mask[0].sum())
        resp = mb.response_ids[0, :L].tolist()
        with torch.no_grad():
            z = snaps[0](torch.tensor([prompt + resp])).logits[0, len(prompt) - 1 : -1].float()
        torch.testing.assert_close(full[:L], torch.log_softmax(z / temperature, -1), atol=3e-5, rtol=0)
        assert (full[L:] == 0).all()
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train/optimizer_steps"] == 5 and row["mdpo/kl"] > 0
