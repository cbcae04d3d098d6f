"""When the trainer uses the engine's log-probs as the old policy's, and when it recomputes them."""

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


def test_inexact_engine_log_probs_are_recomputed(make_cfg):
    """An engine that reports inexact log-probs for the sampling settings (vLLM with top-k / top-p):
    the old log-probs become the policy's own (a no-grad pass), the engine's are kept as the rollout
    log-probs, and their difference is logged. The engine's values are replaced by a constant -7 here,
    so the logged mean |difference| must equal mean |-7 - policy log-prob| over response tokens."""
    ctx, batch = _rollout(make_cfg())
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


def test_bf16_engine_log_probs_are_recomputed_in_float32(make_cfg):
    """``engine_precision="bf16"``: the in-process engine samples with bfloat16 matmuls, so on-policy the
    old log-probs are still the float32 policy's (the recomputing pass), the engine's are kept as the
    rollout log-probs, and their small difference is logged (non-zero: the bf16 products acted; below
    0.05 nats on the tiny model)."""
    from anypo import onednn

    ctx, batch = _rollout(make_cfg(engine_precision="bf16"))
    assert ctx.engine.precision == "bf16" and ctx.engine.logprobs_exact(ctx.cfg.sampling) is False
    m = {}
    ctx.fill_needs(batch, m)
    cfg = ctx.cfg
    want = batched_logprobs(ctx.model, batch, cfg.sampling.temperature, cfg.micro_batch_size)
    torch.testing.assert_close(batch.old_logprobs, want)
    mask = batch.response_mask.bool()
    diff = (batch.rollout_logprobs - want)[mask].abs()
    assert abs(m["rollout/engine_logprob_abs_diff"] - diff.mean().item()) < 1e-6
    if onednn.available():
        assert diff.max().item() > 1e-5
    assert diff.max().item() < 0.05
