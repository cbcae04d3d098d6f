"""The micro-batch contract: losses of micro-batches built with
``batch.select(idx, loss_scale=batch.scale())``, summed, equal the loss of the whole mini-batch, and
so do the gradients, for every aggregation mode and every loss (policy, regularizer, value). A policy
loss whose formula fixes its reduction declares the aggregations it accepts
(``PolicyLossConfig.aggregations``, e.g. ROVER's token mean): it is tested in those and must refuse
the others."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from anypo.ops import AGGREGATIONS
from anypo.registry import get, names
from anypo.types import PolicyOutput, RolloutBatch

N, T = 8, 7
SPLITS = {
    "halves": [[0, 1, 2, 3], [4, 5, 6, 7]],
    "uneven": [[0, 1, 2], [3], [4, 5, 6, 7]],
    "singletons": [[i] for i in range(N)],
    "shuffled": [[6, 1, 3], [0, 7], [5, 2, 4]],
}


def minibatch(seed: int = 0) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor]:
    """8 sequences of lengths 7, 5, 1, 3, 6, 2, 4, 7 (one with a hole), random everything, float64."""
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 5, 1, 3, 6, 2, 4, 7]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    mask[7, 3] = 0
    old = -torch.rand(N, T, generator=g, dtype=torch.float64) * 2
    rollout = old + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * 0.4

    def rnd() -> torch.Tensor:
        return torch.randn(N, T, generator=g, dtype=torch.float64)

    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.arange(N) // 4,
        rewards=torch.rand(N, generator=g, dtype=torch.float64),
        old_logprobs=old,
        ref_logprobs=old + 0.3 * rnd(),
        rollout_logprobs=rollout,
        values=rnd(),
        returns=rnd(),
        advantages=rnd() * mask,
    )
    # SDPO's inputs from the behaviour pass (rows 0, 3, 4, 7 reprompted; the teacher's log-probs)
    batch.extras |= {"sdpo_reprompted": [i in (0, 3, 4, 7) for i in range(N)], "sdpo_teacher_logprobs": old - 0.3}
    lp = (old + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * 0.8).requires_grad_(True)
    entropy = (torch.rand(N, T, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    return batch, lp, entropy


def whole_and_micro(loss_of, batch: RolloutBatch, leaves: list[torch.Tensor], split: list[list[int]], trim: bool):
    """(whole loss, whole grads) and (summed micro losses, accumulated grads).

    ``loss_of(batch, index)`` computes the loss of ``batch`` whose per-sample tensors are rows
    ``index`` of the leaves. With ``trim`` the micro-batches are re-padded to their own max length,
    as a loop that packs micro-batches tightly would do.
    """
    whole = loss_of(batch, torch.arange(N), None)
    g_whole = torch.autograd.grad(whole, leaves, allow_unused=True)
    scale = batch.scale()
    total = torch.zeros((), dtype=torch.float64)
    for idx in split:
        index = torch.tensor(idx)
        micro = batch.select(index, loss_scale=scale)
        cols = None
        if trim:
            width = int(micro.response_mask.nonzero()[:, 1].max()) + 1
            cols = slice(0, width)
            micro = _trim(micro, width)
        total = total + loss_of(micro, index, cols)
    g_micro = torch.autograd.grad(total, leaves, allow_unused=True)
    return whole, g_whole, total, g_micro


def _trim(b: RolloutBatch, width: int) -> RolloutBatch:
    kw = {}
    for f in dataclasses.fields(b):
        v = getattr(b, f.name)
        kw[f.name] = v[:, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 else v
    return RolloutBatch(**kw)


def prepare(cfg, batch: RolloutBatch, lp: torch.Tensor) -> None:
    """What the loop does once per mini-batch for a part that selects tokens over the whole mini-batch
    (``needs_minibatch_prepare``: Clip-Cov, KL-Cov): the micro-batches then carry the selection."""
    if getattr(cfg, "needs_minibatch_prepare", False):
        cfg.prepare_minibatch(batch, lp.detach(), seed=0)


def assert_same(whole, g_whole, total, g_micro):
    torch.testing.assert_close(total, whole, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_whole, g_micro, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def _config(Cfg, aggregation: str, **extra):
    fields = {f.name for f in dataclasses.fields(Cfg)}
    kw = {"aggregation": aggregation, **extra}
    if "eps_low" in fields and Cfg.__name__ in ("GSPO", "LUSPO"):
        kw |= {"eps_low": 0.2, "eps_high": 0.2}  # a band the random ratios partly fall in
    return Cfg(**kw)


# (policy loss, aggregation) for every aggregation each loss's config declares it accepts
POLICY_AGGREGATIONS = [(n, a) for n in names("policy_loss") for a in get("policy_loss", n)[1].aggregations]


@pytest.mark.parametrize("name", names("policy_loss"))
def test_policy_loss_declared_aggregations(name):
    """Every declared aggregation is a known one and builds; every other known one is refused with
    a ValueError naming the field (a loss never silently reduces differently from its config)."""
    Cfg = get("policy_loss", name)[1]
    assert Cfg.aggregations and set(Cfg.aggregations) <= set(AGGREGATIONS), name
    for aggregation in AGGREGATIONS:
        if aggregation in Cfg.aggregations:
            assert _config(Cfg, aggregation).aggregation == aggregation
        else:
            with pytest.raises(ValueError, match="aggregation"):
                _config(Cfg, aggregation)


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize(("name", "aggregation"), POLICY_AGGREGATIONS)
def test_policy_loss_microbatch_sum(name, aggregation, split):
    fn, Cfg = get("policy_loss", name)
    cfg = _config(Cfg, aggregation)
    batch, lp, _ = minibatch()
    prepare(cfg, batch, lp)

    def loss_of(b, index, cols):
        x = lp[index] if cols is None else lp[index][:, cols]
        return fn(PolicyOutput(logprobs=x), b, cfg).loss

    assert_same(*whole_and_micro(loss_of, batch, [lp], SPLITS[split], trim=False))


@pytest.mark.parametrize(("name", "aggregation"), POLICY_AGGREGATIONS)
def test_policy_loss_microbatch_sum_with_trimmed_padding(name, aggregation):
    """Micro-batches re-padded to their own length: seq_mean_token_sum_norm still divides by the
    mini-batch's padded T, carried by ``LossScale.norm_length``."""
    fn, Cfg = get("policy_loss", name)
    cfg = _config(Cfg, aggregation)
    batch, lp, _ = minibatch(1)
    prepare(cfg, batch, lp)

    def loss_of(b, index, cols):
        x = lp[index] if cols is None else lp[index][:, cols]
        return fn(PolicyOutput(logprobs=x), b, cfg).loss

    assert_same(*whole_and_micro(loss_of, batch, [lp], SPLITS["uneven"], trim=True))


@pytest.mark.parametrize("tis", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_tis_microbatch_sum(tis, mode):
    fn, Cfg = get("policy_loss", "ppo_clip")
    cfg = Cfg(tis=tis, tis_mode=mode, tis_cap=1.05)
    batch, lp, _ = minibatch(2)

    def loss_of(b, index, cols):
        return fn(PolicyOutput(logprobs=lp[index]), b, cfg).loss

    assert_same(*whole_and_micro(loss_of, batch, [lp], SPLITS["uneven"], trim=False))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("name", names("regularizer"))
def test_regularizer_microbatch_sum(name, aggregation):
    fn, Cfg = get("regularizer", name)
    if "aggregation" in {f.name for f in dataclasses.fields(Cfg)}:
        cfg = Cfg(aggregation=aggregation)
    elif aggregation == AGGREGATIONS[0]:  # a fixed normaliser of its own (ExPO: sum / mini-batch tokens)
        cfg = Cfg()
    else:
        pytest.skip(f"{name} has no aggregation field: tested once, with its own normaliser")
    batch, lp, ent = minibatch(3)
    # ExPO's flagged self-explanation rows (ignored by every other regularizer)
    batch.extras["expo_positive"] = torch.arange(N) % 2 == 0
    if getattr(cfg, "needs_old_proxy_logprobs", False):  # Lp-Reg: proxy log-probs at some tokens, NaN elsewhere
        from anypo.regularizers.lp_reg import PROXY_LOGPROBS

        pick = (batch.response_mask != 0) & (torch.arange(T) % 2 == 0)
        lq = batch.old_logprobs + 0.3 * torch.arange(N, dtype=torch.float64)[:, None] / N  # above lp on some rows
        batch.extras[PROXY_LOGPROBS] = torch.where(pick, lq, torch.full_like(lq, float("nan")))

    def loss_of(b, index, cols):
        return fn(PolicyOutput(logprobs=lp[index], entropy=ent[index]), b, cfg).loss

    for split in SPLITS.values():
        assert_same(*whole_and_micro(loss_of, batch, [lp, ent], split, trim=False))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("name", names("value_loss"))
def test_value_loss_microbatch_sum(name, aggregation):
    fn, Cfg = get("value_loss", name)
    cfg = Cfg(aggregation=aggregation)
    batch, _, _ = minibatch(4)
    v = (batch.values + torch.randn(N, T, dtype=torch.float64) * 0.6).requires_grad_(True)

    def loss_of(b, index, cols):
        return fn(v[index], b, cfg).loss

    for split in SPLITS.values():
        assert_same(*whole_and_micro(loss_of, batch, [v], split, trim=False))
