"""The behaviour pass's extra inputs (anypo.rollout.old_pass): tempered log-probs (DCPO), mean
log-softmax (ROVER) and the min-p proxy at selected positions (Lp-Reg), checked against a plain
teacher-forced forward of each unpadded sequence with the full [L, V] logits and the formulas
written out here."""

from __future__ import annotations

import math

import pytest
import torch

from anypo.advantages.dcpo import tempered_key
from anypo.policy import batched_logprobs
from anypo.rollout.groups import left_pad
from anypo.rollout.old_pass import OldPassRequest, behaviour_pass, proxy_pass
from anypo.types import RolloutBatch


def _batch(tokenizer, seed=0):
    """3 prompts of different lengths x 2 responses of lengths 1..6, right-padded to T = 8."""
    g = torch.Generator().manual_seed(seed)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    pid, pm = left_pad(prompts, tokenizer.pad_token_id)
    pid, pm = pid.repeat_interleave(2, 0), pm.repeat_interleave(2, 0)
    lengths = torch.tensor([3, 6, 1, 4, 2, 5])
    T = 8
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    resp = torch.randint(20, 1000, (6, T), generator=g) * mask + tokenizer.pad_token_id * (1 - mask)
    return RolloutBatch(
        response_mask=mask,
        group_ids=torch.arange(3).repeat_interleave(2),
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        prompt_ids=pid,
        prompt_mask=pm,
        response_ids=resp,
    )


def _raw_logits(model, b: RolloutBatch, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([L, V] raw logits predicting response i's L tokens, its token ids [L]) from one unpadded forward."""
    prompt = b.prompt_ids[i][b.prompt_mask[i].bool()].tolist()
    L = int(b.response_mask[i].sum())
    resp = b.response_ids[i, :L].tolist()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + resp])).logits[0, len(prompt) - 1 : -1].double()
    return logits, torch.tensor(resp)


@pytest.mark.parametrize("pack", [True, False])
def test_behaviour_pass_tempered_and_mean_logprobs(tiny_model, tokenizer, pack):
    """For each response token o with raw logits z (V entries): extras[T<t>] = z_o / t -
    log sum_v exp(z_v / t) for t in {1.2, 0.8, 1.0}; old_mean_logprobs = (1/V) sum_v (z_v / T_s) -
    log sum_v exp(z_v / T_s) at the sampling temperature T_s = 0.7; 0 on padding. The log-probs
    equal batched_logprobs bit for bit (the same fused head), in micro-batches of 2 with chunks of 3
    positions (several chunks per micro-batch)."""
    b = _batch(tokenizer)
    req = OldPassRequest(logprobs=True, temperatures=(0.8, 1.0, 1.2), mean_logprobs=True)
    out = behaviour_pass(tiny_model, b, 0.7, 2, pack, req, chunk=3)
    assert torch.equal(out["logprobs"], batched_logprobs(tiny_model, b, 0.7, 2, pack))
    for i in range(b.num_seqs):
        z, o = _raw_logits(tiny_model, b, i)
        L, V = z.shape
        for t in (0.8, 1.0, 1.2):
            want = z.gather(-1, o[:, None]).squeeze(-1) / t - torch.logsumexp(z / t, -1)
            torch.testing.assert_close(out[tempered_key(t)][i, :L].double(), want, atol=3e-5, rtol=0)
            assert (out[tempered_key(t)][i, L:] == 0).all()
        want = (z / 0.7).sum(-1) / V - torch.logsumexp(z / 0.7, -1)
        torch.testing.assert_close(out["old_mean_logprobs"][i, :L].double(), want, atol=3e-5, rtol=0)


def test_behaviour_pass_only_what_is_asked(tiny_model, tokenizer):
    """An empty request computes nothing; the mean alone gives one key."""
    b = _batch(tokenizer)
    assert not OldPassRequest().any and behaviour_pass(tiny_model, b, 1.0, 4, True, OldPassRequest()) == {}
    assert set(behaviour_pass(tiny_model, b, 1.0, 4, True, OldPassRequest(mean_logprobs=True))) == {"old_mean_logprobs"}


@pytest.mark.parametrize("pack", [True, False])
def test_proxy_pass_at_selected_positions_only(tiny_model, tokenizer, pack):
    """The proxy of Lp-Reg at 4 chosen positions, by hand: p = softmax(z), keep v iff p_v >= kappa
    max p (kappa = 0.9, so few tokens survive), z'_v = z_v if kept else -1e4, lq = z'_o / T -
    logsumexp(z' / T) at T = 0.7. NaN everywhere else, padding included; rows without a selected
    position never reach the model (row 2 here)."""
    from anypo.regularizers.lp_reg import LpReg

    b = _batch(tokenizer)
    pos = torch.zeros(6, 8, dtype=torch.bool)
    for i, t in [(0, 2), (1, 0), (1, 5), (4, 1)]:
        pos[i, t] = True
    pos[3, 7] = True  # padding: ignored
    cfg = LpReg(kappa=0.9)
    calls = []
    real = tiny_model.forward

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    tiny_model.forward = counting
    try:
        lq = proxy_pass(tiny_model, b, 2, pack, pos, lambda z, y: cfg.proxy_logprobs(z, y, 0.7))
    finally:
        del tiny_model.forward
    for i in range(6):
        z, o = _raw_logits(tiny_model, b, i)
        for t in range(8):
            if (i, t) in [(0, 2), (1, 0), (1, 5), (4, 1)]:
                p = torch.softmax(z[t], -1)
                zz = torch.where(p >= 0.9 * p.max(), z[t], torch.full_like(z[t], -1e4))
                want = float(zz[o[t]] / 0.7 - torch.logsumexp(zz / 0.7, -1))
                assert float(lq[i, t]) == pytest.approx(want, rel=1e-6, abs=3e-5)  # removed targets: about -1e4 / T
            else:
                assert math.isnan(float(lq[i, t]))
    if not pack:  # the padded fallback calls the model once per micro-batch: rows 0, 1, 4 in 2 of size 2
        assert len(calls) == 2


def test_proxy_pass_nothing_selected(tiny_model, tokenizer):
    b = _batch(tokenizer)
    out = proxy_pass(tiny_model, b, 2, True, torch.zeros(6, 8, dtype=torch.bool), lambda z, y: z[:, 0])
    assert torch.isnan(out).all()


@pytest.mark.parametrize("pack", [True, False])
def test_step_anchor_is_a_frozen_copy_of_the_step_start_weights(tiny_model, tokenizer, pack):
    """StepAnchor.fill puts log_softmax(z / T) of the synced weights at every response position
    (T = 0.7; 0 on padding); changing the policy afterwards does not change the anchor until the
    next sync, which then follows it."""
    import copy

    from anypo.rollout.old_pass import StepAnchor

    model = copy.deepcopy(tiny_model)
    b = _batch(tokenizer)
    anchor = StepAnchor(model)
    anchor.fill(b, 0.7, pack)
    first = b.extras["old_full_logprobs"].clone()
    for i in range(b.num_seqs):
        z, _ = _raw_logits(model, b, i)
        L = len(z)
        torch.testing.assert_close(first[i, :L].double(), torch.log_softmax(z / 0.7, -1), atol=3e-5, rtol=0)
        assert (first[i, L:] == 0).all()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    anchor.fill(b, 0.7, pack)
    assert torch.equal(b.extras["old_full_logprobs"], first)
    anchor.sync(model)
    anchor.fill(b, 0.7, pack)
    z, _ = _raw_logits(model, b, 1)
    torch.testing.assert_close(
        b.extras["old_full_logprobs"][1, : len(z)].double(), torch.log_softmax(z / 0.7, -1), atol=3e-5, rtol=0
    )


def test_step_anchor_runs_its_body_once_per_row_and_sync(tiny_model, tokenizer):
    """Between two syncs a row's hidden states under the anchor do not change, so only the first
    micro-batch that holds it runs the anchor's body: a second fill of the same rows (another update
    over the batch), or of a subset of them in another order, runs only the head, and gives the
    teacher-forced log-softmax of each unpadded sequence; a micro-batch with one unseen row runs the
    body once more; sync forgets every row."""
    import copy

    from anypo.rollout.old_pass import StepAnchor

    model = copy.deepcopy(tiny_model)
    b = _batch(tokenizer)
    anchor = StepAnchor(model)

    def check(mb: RolloutBatch, rows: list[int]) -> None:
        for j, i in enumerate(rows):
            z, _ = _raw_logits(model, b, i)
            torch.testing.assert_close(
                mb.extras["old_full_logprobs"][j, : len(z)].double(), torch.log_softmax(z / 0.7, -1), atol=3e-5, rtol=0
            )
            assert (mb.extras["old_full_logprobs"][j, len(z) :] == 0).all()

    first = b.select(torch.tensor([0, 1, 2, 3]))
    anchor.fill(first, 0.7, True)
    assert anchor.body_passes == 1
    again = b.select(torch.tensor([3, 1, 0]))  # cached rows only, another order and shape
    anchor.fill(again, 0.7, True)
    assert anchor.body_passes == 1
    check(again, [3, 1, 0])
    mixed = b.select(torch.tensor([2, 5]))  # row 5 not seen yet
    anchor.fill(mixed, 0.7, True)
    assert anchor.body_passes == 2
    check(mixed, [2, 5])
    anchor.sync(model)
    anchor.fill(b.select(torch.tensor([0])), 0.7, True)
    assert anchor.body_passes == 1
