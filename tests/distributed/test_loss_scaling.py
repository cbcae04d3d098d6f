"""The micro-batch contract across the ranks of a learner group (``anypo.distributed.learner``).

One mini-batch (7 sequences of the tiny model: 2 prompts, one of whose groups lost a sample, with
PPO ratios away from 1 so that some tokens are clipped) is trained on by a 2-rank gloo group over
127.0.0.1 whose policy is sharded with FSDP2, at micro-batch sizes 8, 3 and 1 (so the ranks' shares,
4 and 3 rows, give them different numbers of micro-batches: the filler passes run), for four losses
(GRPO's seq-mean-token-mean PPO clip + k3 KL, DAPO's token mean, Dr. GRPO's constant-length sum,
GSPO's sequence ratio).

Expected values: an independent computation in this process, without any split: the whole
mini-batch as one padded micro-batch through the same forward, the loss part called once with the
mini-batch's own counts, ``backward``, the plain gradients. By the contract
``sum_r sum_m loss(micro_{r,m}) = loss(mini)`` and the same for the gradients, so the group's
``loss/total``, its global gradient norm and the gradient it hands to the optimizer must equal
these within float32 reduction noise (rtol 1e-5 on the loss, max |diff| <= 1e-5 * max |g| on the
gradients; measured: 3e-7 and 2e-7; rtol 1e-4 on the norm, which ``clip_grad_norm_`` sums in float32
over the 3.1M entries of the embedding's gradient: 1e-5 measured for GSPO), at every micro-batch size. With ``dist.mixed_precision`` (bf16 parameters) the step stays close to
the float32 one (the bound is in that test's docstring).

Each rank runs in its own process (``torch.multiprocessing.spawn``); the group's collectives time out
after 120 s and the spawn join is bounded, so a hang fails the test.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dist_helpers import tiny_config  # noqa: E402

from anypo.algorithms import PRESETS  # noqa: E402
from anypo.types import LossScale  # noqa: E402

pytestmark = pytest.mark.distributed

LOSSES = ("grpo", "dapo", "dr_grpo", "gspo")
MICRO = (8, 3, 1)
WORLD = 2


def make_batch(cfg):
    """The step-1 batch of the tiny run with old / reference log-probs and advantages, 7 rows."""
    from anypo.train import Context

    run_dir = Path(cfg.out_dir) / "single"
    run_dir.mkdir()
    ctx = Context.build(cfg, run_dir)
    batch, m = ctx.rollout(1)
    ctx.fill_needs(batch, m)
    batch.advantages = ctx.advantage_fn(batch, ctx.algo.advantage)
    batch = batch.select(torch.arange(batch.num_seqs - 1))  # group 1 lost a sample: shares of 4 and 3 rows
    g = torch.Generator().manual_seed(1)
    batch.old_logprobs = batch.old_logprobs + 0.2 * torch.randn(batch.old_logprobs.shape, generator=g) * batch.mask
    batch.loss_scale = LossScale(
        num_tokens=float(batch.response_mask.sum()),
        num_seqs=float(batch.num_seqs),
        norm_length=float(cfg.sampling.max_new_tokens),
    )
    return ctx.model, batch


def reference(model, batch, cfg, name):
    """Loss and gradients of the whole mini-batch in one pass (no split anywhere)."""
    from anypo import registry
    from anypo.policy import response_logprobs

    algo = PRESETS[name].build()
    model.zero_grad(set_to_none=True)
    out = response_logprobs(model, batch, cfg.sampling.temperature, entropy=True, pack=cfg.pack_prompts)
    loss = registry.registry("policy_loss").fn_for(algo.policy_loss)(out, batch, algo.policy_loss).loss
    for rcfg in algo.regularizers:
        loss = loss + registry.registry("regularizer").fn_for(rcfg)(out, batch, rcfg).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def _rank_main(rank: int, address: str, cfg, batch, out_dir: str) -> None:
    """One rank: build the learner, take one mini-batch step per (loss, micro size), record what the
    optimizer was handed (gathered to whole tensors) and the step's metrics."""
    torch.set_num_threads(1)
    from anypo import registry
    from anypo.distributed.learner import LearnerContext, init_group

    init_group(address, rank, WORLD, timeout_s=120)
    ctx = LearnerContext.build(cfg, Path(out_dir) / f"rank{rank}")
    names = dict(ctx.model.named_parameters())
    seen = {}

    def capture():  # every rank reaches the optimizer step together (the no-signal test is global)
        seen["grads"] = {n: p.grad.full_tensor().clone() for n, p in names.items() if p.grad is not None}

    ctx.optimizer.step = capture
    results = {}
    for name in LOSSES:
        ctx.algo = PRESETS[name].build()
        ctx.loss_fn = registry.registry("policy_loss").fn_for(ctx.algo.policy_loss)
        ctx.reg_fns = [registry.registry("regularizer").fn_for(r) for r in ctx.algo.regularizers]
        for micro in MICRO:
            ctx.cfg = dataclasses.replace(ctx.cfg, micro_batch_size=micro)
            metrics = ctx._minibatch_step(batch.select(torch.arange(batch.num_seqs)), {})
            results[(name, micro)] = (metrics, seen.pop("grads"))
    # FSDP2's MixedPrecisionPolicy (bf16 parameters in forward and backward, float32 reduction): one step
    mp_cfg = dataclasses.replace(cfg, dist=dataclasses.replace(cfg.dist, mixed_precision=True))
    mp_ctx = LearnerContext.build(mp_cfg, Path(out_dir) / f"rank{rank}_mp")
    mp_names = dict(mp_ctx.model.named_parameters())

    def capture_mp():
        seen["grads"] = {n: p.grad.full_tensor().clone() for n, p in mp_names.items() if p.grad is not None}

    mp_ctx.optimizer.step = capture_mp
    metrics = mp_ctx._minibatch_step(batch.select(torch.arange(batch.num_seqs)), {})
    results[("grpo", "bf16")] = (metrics, seen.pop("grads"))
    if rank == 0:
        torch.save(results, Path(out_dir) / "results.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def group_results(tmp_path_factory):
    import torch.multiprocessing as mp

    from anypo.distributed.learner import free_address

    tmp = tmp_path_factory.mktemp("dist")
    cfg = tiny_config(tmp, max_grad_norm=1e9, preset="grpo", algo=PRESETS["grpo"].build())
    model, batch = make_batch(cfg)
    expected = {name: reference(model, batch, cfg, name) for name in LOSSES}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(
        _rank_main, args=(free_address(), cfg, batch, str(tmp)), nprocs=WORLD, join=False, start_method="spawn"
    )
    for _ in range(300):  # at most 300 s, then the test fails instead of hanging
        if ctx.join(timeout=1):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail("the 2-rank group did not finish in 300 s")
    return torch.load(tmp / "results.pt", weights_only=False), expected


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("micro", MICRO)
def test_two_ranks_any_micro_batch_size_equal_the_whole_minibatch(group_results, name, micro):
    results, expected = group_results
    metrics, grads = results[(name, micro)]
    loss, ref = expected[name]
    assert metrics["loss/total"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert set(grads) == set(ref)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in ref.values()))
    assert metrics["train/grad_norm"] == pytest.approx(float(norm), rel=1e-4)
    scale = max(float(g.abs().max()) for g in ref.values())
    for n, g in ref.items():
        assert float((grads[n] - g).abs().max()) <= 1e-5 * scale, n


def test_mixed_precision_keeps_the_loss_and_gradient_direction(group_results):
    """bf16 parameters round every weight to 8 bits of mantissa (relative error up to 2^-9), so the
    loss and gradients move away from the float32 ones by about that much through the network: the
    loss stays within 1% and the gradient keeps its direction (cosine similarity > 0.999 with the
    float32 gradient of the whole mini-batch; measured: 4e-4 and 0.99998)."""
    results, expected = group_results
    metrics, grads = results[("grpo", "bf16")]
    loss, ref = expected["grpo"]
    assert abs(metrics["loss/total"] - loss) <= 0.01 * abs(loss)
    a = torch.cat([grads[n].flatten().double() for n in ref])
    b = torch.cat([ref[n].flatten().double() for n in ref])
    assert float(a @ b / (a.norm() * b.norm())) > 0.999
