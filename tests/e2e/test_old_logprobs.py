"""When the trainer uses the engine's log-probs as the old policy's, and when it recomputes them."""

import math
from pathlib import Path

import torch

from anypo.policy import batched_logprobs
from anypo.train import Context


def _rollout(cfg):
    ctx = Context.build(cfg, Path(cfg.out_dir))
    batch, _ = ctx.rollout(1)
    return ctx, batch


def test_exact_engine_log_probs_are_used_on_policy(make_cfg):
    """The HF engine's log-probs are the contract's: on-policy, fill_needs keeps them as they are."""
    ctx, batch = _rollout(make_cfg())
    engine_lp = batch.old_logprobs.clone()
    m = {}
    ctx.fill_needs(batch, m)
    assert torch.equal(batch.old_logprobs, engine_lp)
    assert "rollout/engine_logprob_abs_diff" not in m


def test_inexact_engine_log_probs_are_recomputed_when_asked(make_cfg):
    """An engine that reports inexact log-probs for the sampling settings (vLLM with top-k / top-p), with
    ``recompute_old_logprobs``: the old log-probs become the policy's own (a no-grad pass), the engine's
    are kept as the rollout log-probs, and their difference is logged. The engine's values are replaced
    by a constant -7 here, so the logged mean |difference| must equal mean |-7 - policy log-prob| over
    response tokens."""
    ctx, batch = _rollout(make_cfg(recompute_old_logprobs=True))
    ctx.engine.logprobs_exact = lambda sampling: False
    mask = batch.response_mask.bool()
    batch.old_logprobs = torch.where(mask, torch.full_like(batch.old_logprobs, -7.0), 0.0)
    m = {}
    ctx.fill_needs(batch, m)
    cfg = ctx.cfg
    want = batched_logprobs(ctx.model, batch, cfg.sampling.temperature, cfg.micro_batch_size)
    torch.testing.assert_close(batch.old_logprobs, want)
    assert torch.all(batch.rollout_logprobs[mask] == -7.0)
    expected_diff = (want[mask] + 7.0).abs().mean().item()
    assert abs(m["rollout/engine_logprob_abs_diff"] - expected_diff) < 1e-5


def test_inexact_engine_on_policy_takes_the_old_log_probs_from_the_training_forward(make_cfg):
    """On-policy (one update per batch) with an inexact engine and no part reading the old log-probs
    before the update, no learner pass runs: ``old_logprobs`` stays None until the loss, which takes
    its own forward's (detached), and the engine's are the rollout log-probs. Checked against a run
    whose old log-probs are the policy's own (the exact fp32 engine, same seed, same batch):

    - the logged gap is mean |-7 - policy log-prob| over the response tokens (the engine's values are
      replaced by -7, as above), computed from a teacher-forced pass before the update;
    - the update is the same: with old = the forward's own log-probs the first update's ratio is
      exactly 1, and with the exact engine's it is 1 within float32 noise, so the gradient norms agree
      to 1e-5 relative (the losses are both ~0, the group-relative advantages summing to 0).
    """
    exact_ctx, exact_batch = _rollout(make_cfg(name="exact"))
    m_exact = exact_ctx.learn(exact_batch, {}, 1)

    ctx, batch = _rollout(make_cfg(name="inexact"))
    ctx.engine.logprobs_exact = lambda sampling: False
    mask = batch.response_mask.bool()
    cfg = ctx.cfg
    want = batched_logprobs(ctx.model, batch, cfg.sampling.temperature, cfg.micro_batch_size)
    batch.old_logprobs = torch.where(mask, torch.full_like(batch.old_logprobs, -7.0), 0.0)
    m = ctx.learn(batch, {}, 1)  # fill_needs, advantages, the update
    assert batch.old_logprobs is None and torch.all(batch.rollout_logprobs[mask] == -7.0)
    expected_diff = (want[mask] + 7.0).abs().mean().item()
    assert abs(m["rollout/engine_logprob_abs_diff"] - expected_diff) < 1e-5
    assert abs(m["train/grad_norm"] - m_exact["train/grad_norm"]) <= 1e-5 * m_exact["train/grad_norm"]
    assert m_exact["train/grad_norm"] > 0
    assert abs(m["loss/total"] - m_exact["loss/total"]) < 1e-6  # both ~0: ratio 1 times zero-mean advantages


def test_a_part_reading_old_log_probs_before_the_update_gets_them_recomputed(make_cfg):
    """DRPO's advantage reads the behaviour log-probs (``needs_old_logprobs_before_update``): with an
    inexact engine the learner's pass runs before the advantages, as off-policy."""
    from anypo.algorithms import PRESETS

    algo = PRESETS["drpo"].build()
    assert algo.needs("old_logprobs_before_update")
    ctx, batch = _rollout(make_cfg(algo=algo))
    ctx.engine.logprobs_exact = lambda sampling: False
    m = {}
    ctx.fill_needs(batch, m)
    cfg = ctx.cfg
    want = batched_logprobs(ctx.model, batch, cfg.sampling.temperature, cfg.micro_batch_size)
    torch.testing.assert_close(batch.old_logprobs, want)
    assert "rollout/engine_logprob_abs_diff" in m


def test_lp_reg_proxy_positions_get_recomputed_old_log_probs_from_an_inexact_engine(make_cfg):
    """Lp-Reg chooses its proxy positions from the old log-probs after the advantages, before the
    update: with an inexact engine (here the bfloat16 one) they must come from the learner's pass, and
    the proxy pass must then run (it raised on ``old_logprobs`` None before Lp-Reg declared the need)."""
    from anypo.algorithms import PRESETS
    from anypo.regularizers.lp_reg import PROXY_LOGPROBS

    algo = PRESETS["lp_reg"].build()
    assert algo.needs("old_logprobs_before_update") and algo.needs("old_proxy_logprobs")
    ctx, batch = _rollout(make_cfg(algo=algo, engine_precision="bf16"))
    cfg = ctx.cfg
    want = batched_logprobs(ctx.model, batch, cfg.sampling.temperature, cfg.micro_batch_size)
    m = ctx.learn(batch, {}, 1)
    torch.testing.assert_close(batch.old_logprobs, want)
    assert PROXY_LOGPROBS in batch.extras and math.isfinite(m["loss/total"])


def test_bf16_engine_old_log_probs_are_the_float32_training_forwards(make_cfg):
    """``engine_precision="bf16"``: the in-process engine samples with bfloat16 matmuls, so its log-probs
    are not the float32 policy's. On-policy the loss takes the old log-probs from its own float32
    forward, the engine's are kept as the rollout log-probs, and their small difference is logged
    (non-zero: the bf16 products acted; below 0.05 nats on the tiny model)."""
    from anypo import onednn

    ctx, batch = _rollout(make_cfg(engine_precision="bf16"))
    assert ctx.engine.precision == "bf16" and ctx.engine.logprobs_exact(ctx.cfg.sampling) is False
    cfg = ctx.cfg
    want = batched_logprobs(ctx.model, batch, cfg.sampling.temperature, cfg.micro_batch_size)
    engine = batch.old_logprobs.clone()
    m = ctx.learn(batch, {}, 1)
    assert batch.old_logprobs is None and torch.equal(batch.rollout_logprobs, engine)
    mask = batch.response_mask.bool()
    diff = (engine - want)[mask].abs()
    assert abs(m["rollout/engine_logprob_abs_diff"] - diff.mean().item()) < 1e-6
    if onednn.available():
        assert diff.max().item() > 1e-5
    assert diff.max().item() < 0.05
