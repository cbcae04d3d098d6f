"""What the online loop provides to the parts that declare it: state kept across steps (and across
an interrupted run), stale rollouts replayed from a queue, the greedy rewards of ReMax, and the
engine's log-probs next to the learner's for rollout corrections."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from anypo import checkpoint, registry
from anypo.algorithms import PRESETS
from anypo.ops import aggregate, masked_mean
from anypo.train import train
from anypo.types import LossOutput, PartConfig, PolicyOutput, RolloutBatch


def _rows(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


# ---- 1. part state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyDual(PartConfig):
    """A test-only stateful regularizer (no paper; https://example.invalid): ``lam * token_mean(lp)``
    with a multiplier that moves after every optimizer step, ``lam <- lam + 0.5 * mean(lp)``, like
    the dual ascent of a primal-dual method."""

    @property
    def stateful(self) -> bool:
        return True

    def init_state(self) -> dict:
        return {"lam": 0.1, "updates": 0, "history": []}

    def update_state(self, state: dict, metrics: dict[str, float]) -> None:
        state["lam"] = state["lam"] + 0.5 * metrics["toy/logprob_mean"]
        state["updates"] += 1
        state["history"].append(metrics["toy/lam"])


def toy_dual(out: PolicyOutput, batch: RolloutBatch, cfg: ToyDual) -> LossOutput:
    """``lam * token_mean(lp)`` with ``lam`` from the part's state."""
    state = batch.require("part_state", "the loop hands a stateful part its state")
    mask = batch.response_mask.to(out.logprobs.dtype)
    lp = torch.where(mask > 0, out.logprobs, torch.zeros_like(out.logprobs))
    loss = state["lam"] * aggregate(lp, mask, "token_mean", batch.scale())
    metrics = {"toy/lam": float(state["lam"]), "toy/logprob_mean": float(masked_mean(lp.detach(), mask))}
    return LossOutput(loss=loss, metrics=metrics)


@pytest.fixture
def toy_dual_registered():
    """Register the toy part for one test only (the contract test must not see it)."""
    reg = registry.registry("regularizer")
    reg.register("toy_dual", config=ToyDual)(toy_dual)
    yield ToyDual()
    reg._entries.pop("toy_dual")
    reg._by_config.pop(ToyDual)


def test_part_state_survives_an_interrupted_run(make_cfg, tmp_path, toy_dual_registered):
    """Run A: 4 steps, 2 whole-group mini-batches each, so the toy state is updated 8 times. Run B:
    a KeyboardInterrupt from the reward inside step 3's rollout; the checkpoint of step 2 is kept and
    the run resumed. B's state after step 4 (multiplier, update count, the multiplier seen at each
    update) must equal A's, and the multiplier logged at steps 3 and 4 too: a resume that restarted
    the state at 0.1 would log 0.1 at step 3 and count 4 updates."""
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
    base = PRESETS["dr_grpo"].build()
    algo = dataclasses.replace(base, regularizers=(toy_dual_registered,), minibatch_prompts=1)
    kw = {"algo": algo, "steps": 4, "save_every": 10}
    a = train(make_cfg(out_dir=str(tmp_path / "a"), rewards=(f"{plain}:reward",), **kw))
    cfg_b = make_cfg(out_dir=str(tmp_path / "b"), rewards=(f"{stopping}:reward",), **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b)
    (b,) = list((tmp_path / "b").iterdir())
    assert checkpoint.latest(b).name == "step_000002"
    saved = checkpoint.load(checkpoint.latest(b))[1]["part_states"]["regularizers.0"]
    assert saved["updates"] == 4 and saved["lam"] != 0.1
    train(cfg_b, resume=b)

    sa = checkpoint.load(checkpoint.latest(a))[1]["part_states"]["regularizers.0"]
    sb = checkpoint.load(checkpoint.latest(b))[1]["part_states"]["regularizers.0"]
    assert sa["updates"] == sb["updates"] == 8
    assert sa == sb
    ra, rb = _rows(a), _rows(b)
    for step in (3, 4):
        assert ra[step]["toy/lam"] == rb[step]["toy/lam"] != 0.1
        assert ra[step]["policy/loss"] == rb[step]["policy/loss"]
    assert not any(k.startswith("state") for k in ra[4])  # the loop logs nothing of the state itself


# ---- 2. stale rollouts --------------------------------------------------------------------------


@pytest.mark.parametrize("engine_precision", ["fp32", "bf16"])
def test_stale_batches_keep_their_generation_time_logprobs(make_cfg, monkeypatch, engine_precision):
    """grpo under ``Replay(sync_interval=2)`` for 4 steps: batches 1 and 2 are generated at step 1
    with the initial weights, batches 3 and 4 at step 3, so the staleness is 0, 1, 0, 1 and steps 2
    and 4 generate nothing. Each batch is trained on with exactly the log-probs recorded when it was
    generated; on a stale batch they differ from the current policy's (lr 1e-2 moved the weights),
    which shows they were not recomputed; on a fresh one they agree with it. With the bfloat16 engine
    (inexact log-probs) the recorded ones are the float32 learner's at generation time: a batch of one
    update per step must not take them from its training forward when it is trained a step later."""
    from anypo.policy import batched_logprobs
    from anypo.rollout.replay import Replay
    from anypo.train import Context

    generated, trained = {}, []
    real_generate, real_update = Context._generate_stale, Context.update

    def spy_generate(self, step):
        batch, m = real_generate(self, step)
        generated[step] = batch.old_logprobs.clone()
        return batch, m

    def spy_update(self, batch):
        now = batched_logprobs(self.model, batch, self.cfg.sampling.temperature, self.cfg.micro_batch_size)
        trained.append((batch.old_logprobs.clone(), now, batch.staleness.clone(), batch.response_mask.bool()))
        return real_update(self, batch)

    monkeypatch.setattr(Context, "_generate_stale", spy_generate)
    monkeypatch.setattr(Context, "update", spy_update)
    algo = dataclasses.replace(PRESETS["grpo"].build(), replay=Replay(sync_interval=2))
    rows = _rows(train(make_cfg(algo=algo, steps=4, lr=1e-2, engine_precision=engine_precision)))
    assert [rows[s]["replay/staleness_mean"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]
    assert [rows[s]["replay/generated_batches"] for s in (1, 2, 3, 4)] == [2.0, 0.0, 2.0, 0.0]
    assert rows[2]["rollout/generated_tokens"] == 0 and rows[1]["rollout/generated_tokens"] > 0
    assert sorted(generated) == [1, 2, 3, 4]
    for step, (old, now, stale, mask) in enumerate(trained, start=1):
        assert torch.equal(old, generated[step])
        assert torch.all(stale == (step + 1) % 2)
        gap = (old - now)[mask].abs().max().item()
        assert (gap > 1e-3) if step % 2 == 0 else (gap < 1e-4), (step, gap)


def test_stale_rollouts_resume_like_an_uninterrupted_run(make_cfg, tmp_path):
    """One-step off-policy (``sync_offset=1``): step 2 generates batch 3, which waits in the queue.
    Run B is interrupted inside step 3's rollout (generating batch 4); the checkpoint of step 2 holds
    batch 3 as it was generated. The resumed B must train steps 3 and 4 on the same batches as the
    uninterrupted A: same rewards, losses, gradient norms and staleness."""
    from anypo.rollout.replay import Replay

    body = "    return (sum(map(ord, sample.completion)) % 11) / 10\n"
    plain = tmp_path / "plain.py"
    plain.write_text("def reward(sample):\n" + body)
    stopping = tmp_path / "stopping.py"
    stopping.write_text(
        "calls = 0\n"
        "def reward(sample):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls == 3 * 8 + 3:  # batches 1-2 at step 1, 3 at step 2, then inside batch 4 (step 3)\n"
        "        raise KeyboardInterrupt\n" + body
    )
    algo = dataclasses.replace(PRESETS["grpo"].build(), replay=Replay(sync_offset=1))
    kw = {"algo": algo, "steps": 4, "save_every": 10, "lr": 1e-2}
    a = train(make_cfg(out_dir=str(tmp_path / "a"), rewards=(f"{plain}:reward",), **kw))
    cfg_b = make_cfg(out_dir=str(tmp_path / "b"), rewards=(f"{stopping}:reward",), **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b)
    (b,) = list((tmp_path / "b").iterdir())
    assert checkpoint.latest(b).name == "step_000002"
    queued = checkpoint.load(checkpoint.latest(b))[1]["replay"]
    assert [e.step for e in queued.entries] == [3]
    train(cfg_b, resume=b)
    ra, rb = _rows(a), _rows(b)
    assert [ra[s]["replay/staleness_mean"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    for step in (3, 4):
        for k in ("reward/mean", "policy/loss", "train/grad_norm", "replay/staleness_mean", "kl/ref"):
            assert ra[step][k] == rb[step][k], (step, k)


# ---- 3. greedy rewards (ReMax) ------------------------------------------------------------------


def test_greedy_rewards_are_an_argmax_decode_and_never_trained_on(make_cfg):
    """With the remax preset the loop decodes one greedy response per prompt. Recomputed here with a
    plain argmax loop over full forward passes (no KV cache, no engine): each group's
    ``greedy_rewards`` is the toy reward of that decode. The batch still holds only the B x G
    sampled rows, and the greedy tokens count in the step's generated tokens."""
    from anypo.train import Context

    cfg = make_cfg(algo=PRESETS["remax"].build())
    ctx = Context.build(cfg, Path(cfg.out_dir))
    batch, m = ctx.rollout(1)
    assert batch.num_seqs == cfg.prompts_per_step * cfg.samples_per_prompt
    assert m["rollout/generated_tokens"] == float(batch.response_mask.sum()) + m["rollout/greedy_tokens"]
    eos = set(ctx.engine.eos_ids.tolist())
    wants = []
    for g in batch.group_ids.unique().tolist():
        rows = (batch.group_ids == g).nonzero().flatten()
        prompt = ctx.prompt_ids[batch.extras["prompt_index"][int(rows[0])]]
        ids, out = torch.tensor([prompt]), []
        with torch.no_grad():
            for _ in range(cfg.sampling.max_new_tokens):
                tok = int(ctx.model(input_ids=ids).logits[0, -1].argmax())
                out.append(tok)
                if tok in eos:
                    break
                ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
        text = ctx.tokenizer.decode(out, skip_special_tokens=True)
        want = (sum(ord(c) for c in text) % 11) / 10.0  # toy_rewards.char_sum
        wants.append(want)
        assert torch.all(batch.greedy_rewards[rows] == torch.tensor(want, dtype=batch.greedy_rewards.dtype))
    assert m["reward/greedy_mean"] == pytest.approx(sum(wants) / len(wants)) and m["reward/greedy_errors"] == 0


# ---- 4. the engine's log-probs for rollout corrections -------------------------------------------


def test_correction_gets_engine_and_learner_logprobs_on_policy(make_cfg):
    """A loss with a rollout correction (the icepop preset) declares needs_rollout_logprobs: even
    on-policy with the fp32 HF engine, whose log-probs are exact, the loop recomputes the old
    log-probs with the learner and keeps the engine's, unchanged, as rollout_logprobs. Without the
    correction (grpo) nothing is recomputed."""
    from anypo.policy import batched_logprobs
    from anypo.train import Context

    cfg = make_cfg(algo=PRESETS["icepop"].build())
    ctx = Context.build(cfg, Path(cfg.out_dir))
    batch, m = ctx.rollout(1)
    engine = batch.old_logprobs.clone()
    ctx.fill_needs(batch, m)
    assert torch.equal(batch.rollout_logprobs, engine)
    want = batched_logprobs(ctx.model, batch, cfg.sampling.temperature, cfg.micro_batch_size)
    torch.testing.assert_close(batch.old_logprobs, want)
    assert m["rollout/engine_logprob_abs_diff"] < 1e-4  # same fp32 function, two implementations

    plain = make_cfg()
    ctx = Context.build(plain, Path(plain.out_dir))
    batch, m = ctx.rollout(1)
    ctx.fill_needs(batch, m)
    assert batch.rollout_logprobs is None and "rollout/engine_logprob_abs_diff" not in m


def test_icepop_masks_what_the_engine_disagrees_on(make_cfg, monkeypatch):
    """An engine whose log-probs are off by +3 nats on every second response token (a ratio learner /
    engine of e^-3 = 0.05 < alpha 0.5) and exact elsewhere: IcePop drops exactly those tokens
    (tis/floored_frac is their share of the response tokens) and keeps the others with weight ~1."""
    from anypo.engines.hf import HFEngine

    real = HFEngine.generate
    shares = []

    def skewed(self, prompts, n, sampling, seed=None):
        g = real(self, prompts, n, sampling, seed=seed)
        odd = torch.zeros_like(g.logprobs, dtype=torch.bool)
        odd[:, 1::2] = True
        odd &= g.response_mask.bool()
        g.logprobs = torch.where(odd, g.logprobs + 3.0, g.logprobs)
        shares.append(float(odd.sum()) / float(g.response_mask.sum()))
        return g

    monkeypatch.setattr(HFEngine, "generate", skewed)
    row = _rows(train(make_cfg(algo=PRESETS["icepop"].build(), steps=1)))[1]
    assert row["tis/floored_frac"] == pytest.approx(shares[0], abs=1e-6)
    assert row["tis/capped_frac"] == 0.0


# ---- 5. the evaluation schedule -------------------------------------------------------------------


def test_no_eval_at_start_skips_step_zero_only(make_cfg):
    """eval_every 2 on a 2-step run evaluates at steps 0 and 2; eval_at_start False leaves out step 0
    (no row for it at all) and keeps the evaluation after the last step."""
    run = train(make_cfg(eval_every=2, eval_prompts=2, eval_at_start=False))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert "eval/pass@1" not in rows[0] and "eval/pass@1" in rows[1]
