"""Clip-Cov and KL-Cov (arXiv 2505.22617): the per-mini-batch token selection (``prepare_minibatch``)
and the losses. Expected values are derived by hand in each docstring or computed by a plain-python
loop written from the official code's formulas; float64 gradchecks for both losses."""

from __future__ import annotations

import math

import pytest
import torch

from anypo.losses.cov import CLIP_COV_CANDIDATES, CLIP_COV_DETACHED, KL_COV_SELECTED, ClipCov, KLCov, clip_cov, kl_cov
from anypo.types import LossScale, PolicyOutput, RolloutBatch

F64 = torch.float64


def _batch(adv, old, mask=None) -> RolloutBatch:
    adv = torch.tensor(adv, dtype=F64)
    mask = torch.ones_like(adv) if mask is None else torch.tensor(mask, dtype=F64)
    return RolloutBatch(
        response_mask=mask,
        group_ids=torch.arange(adv.shape[0]),
        rewards=torch.zeros(adv.shape[0], dtype=F64),
        old_logprobs=torch.tensor(old, dtype=F64),
        advantages=adv,
    )


# ---- Clip-Cov ----------------------------------------------------------------------------------


def test_clip_cov_hand_example():
    """A = [[2, 2], [-2, -2]] (mean 0), lp = old = [[-0.5, -3.5], [-2, -2]] (mean -2): cov = A (lp + 2) =
    [[3, -3], [0, 0]]. Only token (0, 0) is in the band (1, 5); n = 4, k = max(1, int(2e-4 * 4)) = 1:
    it is detached whatever the seed. r = 1 and nothing is clipped, so L = -A r = [[0 (detached), -2],
    [2, 2]], token mean (the detached token still counts) = 2 / 4 = 0.5; dL/dlp = -A r / 4 elsewhere
    = -0.5, 0.5, 0.5, and exactly 0 at the detached token."""
    lp0 = [[-0.5, -3.5], [-2.0, -2.0]]
    b = _batch([[2.0, 2.0], [-2.0, -2.0]], lp0)
    cfg = ClipCov()
    for seed in (0, 1, 7):
        cfg.prepare_minibatch(b, torch.tensor(lp0, dtype=F64), seed)
        assert b.extras[CLIP_COV_DETACHED].tolist() == [[True, False], [False, False]]
        assert b.extras[CLIP_COV_CANDIDATES].tolist() == [[True, False], [False, False]]
    lp = torch.tensor(lp0, dtype=F64, requires_grad=True)
    out = clip_cov(PolicyOutput(logprobs=lp), b, cfg)
    assert float(out.loss.detach()) == pytest.approx(0.5, abs=1e-15)
    out.loss.backward()
    assert lp.grad.tolist() == [[0.0, -0.5], [0.5, 0.5]]
    assert out.metrics["clip_cov/detached_frac"] == 0.25 and out.metrics["clip_cov/candidate_frac"] == 0.25
    assert out.metrics["policy/clipfrac"] == 0.0


def test_clip_cov_skips_ppo_clipped_tokens_and_uses_the_current_logprobs():
    """Same batch, but the current log-prob of token (0, 0) is -0.5 while old is -0.5 - ln 3 (r = 3 >
    1 + eps_high = 2, A > 0: PPO clips it). Its cov with the current lp is still 3 (in band), but it is
    already clipped, so no candidate is left and nothing is detached. With eps 1 and the old
    log-prob at -0.5 - ln 1.5 (r = 1.5, inside the clip range) it is the candidate again."""
    cur = [[-0.5, -3.5], [-2.0, -2.0]]
    b = _batch([[2.0, 2.0], [-2.0, -2.0]], [[-0.5 - math.log(3.0), -3.5], [-2.0, -2.0]])
    ClipCov().prepare_minibatch(b, torch.tensor(cur, dtype=F64), 0)
    assert not b.extras[CLIP_COV_CANDIDATES].any() and not b.extras[CLIP_COV_DETACHED].any()
    b.old_logprobs[0, 0] = -0.5 - math.log(1.5)
    ClipCov().prepare_minibatch(b, torch.tensor(cur, dtype=F64), 0)
    assert b.extras[CLIP_COV_DETACHED].tolist() == [[True, False], [False, False]]


def test_clip_cov_draws_k_of_the_candidates_reproducibly():
    """40 sequences x 50 tokens: every token of a row with A = 2 and lp = -0.5 is a candidate (cov =
    (2 - 0)(-0.5 + 2) = 3, the other half A = -2, lp = -3.5: cov 3 too). n = 2000, frac = 2e-3: k =
    int(4.0) = 4 tokens detached, all candidates; the same seed draws the same 4 and different seeds
    differ (a uniform draw of 4 of 2000 repeats with probability ~1e-11)."""
    adv = [[2.0] * 50 if i % 2 == 0 else [-2.0] * 50 for i in range(40)]
    lp0 = [[-0.5] * 50 if i % 2 == 0 else [-3.5] * 50 for i in range(40)]
    b = _batch(adv, lp0)
    cfg = ClipCov(frac=2e-3)
    draws = []
    for seed in (3, 3, 4, 5):
        cfg.prepare_minibatch(b, torch.tensor(lp0, dtype=F64), seed)
        d = b.extras[CLIP_COV_DETACHED]
        assert int(d.sum()) == 4 and bool((d <= b.extras[CLIP_COV_CANDIDATES]).all())
        draws.append(d.nonzero().tolist())
    assert draws[0] == draws[1] and draws[2] != draws[0] and draws[3] != draws[2]


def test_clip_cov_masked_tokens_and_missing_selection():
    """A padded token is never a candidate even if its garbage would be in the band, and the means of
    the covariance are over response tokens only: A = [[2, 5], [-2, 0]] with the (0, 1) token padded
    (-inf log-prob): mean A over the three = 0, mean lp of [-0.5, -2, -3.5] = -2: cov(0, 0) = 2 * 1.5 = 3
    (detached). Without the selection the loss names needs_minibatch_prepare."""
    b = _batch([[2.0, 5.0], [-2.0, 0.0]], [[-0.5, float("-inf")], [-2.0, -3.5]], mask=[[1, 0], [1, 1]])
    ClipCov().prepare_minibatch(b, b.old_logprobs.clone(), 0)
    assert b.extras[CLIP_COV_DETACHED].tolist() == [[True, False], [False, False]]
    with pytest.raises(ValueError, match="needs_minibatch_prepare"):
        clip_cov(PolicyOutput(logprobs=torch.zeros(2, 1, dtype=F64)), _batch([[1.0]] * 2, [[0.0]] * 2), ClipCov())


def test_clip_cov_loss_is_ppo_clip_off_the_selection():
    """With a fixed selection the loss is PPO clip (eps 1) with the selected tokens zeroed: compared with
    a plain-python loop of max(-A r, -A clip(r, 0, 2)) over 3 x 4 random tokens, 2 of them detached."""
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 4, generator=g, dtype=F64) * 0.8 - 1
    old = lp.detach() + torch.randn(3, 4, generator=g, dtype=F64) * 0.9
    adv = torch.randn(3, 4, generator=g, dtype=F64)
    b = _batch(adv.tolist(), old.tolist())
    det = torch.zeros(3, 4, dtype=torch.bool)
    det[0, 1] = det[2, 3] = True
    b.extras[CLIP_COV_DETACHED], b.extras[CLIP_COV_CANDIDATES] = det, det
    total = 0.0
    for i in range(3):
        for t in range(4):
            if det[i, t]:
                continue
            r = math.exp(float(lp[i, t] - old[i, t]))
            a = float(adv[i, t])
            total += max(-a * r, -a * min(max(r, 0.0), 2.0))
    out = clip_cov(PolicyOutput(logprobs=lp), b, ClipCov())
    assert float(out.loss.detach()) == pytest.approx(total / 12, rel=1e-12)


def test_clip_cov_gradcheck():
    """float64 finite differences of the loss in lp with a fixed selection (ratios away from the clip kinks)."""
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 4, generator=g, dtype=F64) - 0.5
    lp = (old + (torch.rand(3, 4, generator=g, dtype=F64) - 0.5) * 0.6).requires_grad_(True)
    b = _batch(torch.randn(3, 4, generator=g, dtype=F64).tolist(), old.tolist(), mask=[[1, 1, 1, 0]] * 3)
    det = torch.zeros(3, 4, dtype=torch.bool)
    det[1, 2] = True
    b.extras[CLIP_COV_DETACHED], b.extras[CLIP_COV_CANDIDATES] = det, det
    cfg = ClipCov(eps_low=0.2, eps_high=0.2)
    assert torch.autograd.gradcheck(lambda x: clip_cov(PolicyOutput(logprobs=x), b, cfg).loss, (lp,))


def test_clip_cov_config_errors():
    for kw in ({"frac": 0.0}, {"frac": 1.5}, {"cov_low": 5.0, "cov_high": 1.0}, {"eps_low": -0.1}):
        with pytest.raises(ValueError, match="ClipCov"):
            ClipCov(**kw)


# ---- KL-Cov ------------------------------------------------------------------------------------


def test_kl_cov_hand_example():
    """A = [[1, 1], [-1, -1]] (mean 0), current lp = [[-0.2, -1.0], [-0.6, -2.2]] (mean -1.0): cov =
    A (lp + 1) = [[0.8, 0], [-0.4, 1.2]]. n = 4, frac 0.25: k = 1, the top token (1, 1). With old =
    [[-0.3, -1.0], [-0.5, -2.0]]: r = [[e^0.1, 1], [e^-0.1, e^-0.2]], L = -A r + [(1, 1)] |lp - old| =
    [[-e^0.1, -1], [e^-0.1, e^-0.2 + 0.2]], token mean /4. dL/dlp = -A r / 4 except at (1, 1):
    (e^-0.2 + sign(-0.2)) / 4 = (e^-0.2 - 1) / 4: the penalty pulls the token back toward old."""
    cur = [[-0.2, -1.0], [-0.6, -2.2]]
    b = _batch([[1.0, 1.0], [-1.0, -1.0]], [[-0.3, -1.0], [-0.5, -2.0]])
    cfg = KLCov(frac=0.25)
    cfg.prepare_minibatch(b, torch.tensor(cur, dtype=F64), seed=123)
    assert b.extras[KL_COV_SELECTED].tolist() == [[False, False], [False, True]]
    lp = torch.tensor(cur, dtype=F64, requires_grad=True)
    out = kl_cov(PolicyOutput(logprobs=lp), b, cfg)
    e = math.exp
    want = (-e(0.1) - 1 + e(-0.1) + e(-0.2) + 0.2) / 4
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-12)
    out.loss.backward()
    torch.testing.assert_close(
        lp.grad, torch.tensor([[-e(0.1), -1.0], [e(-0.1), e(-0.2) - 1.0]], dtype=F64) / 4, rtol=1e-12, atol=0
    )
    assert out.metrics["kl_cov/selected_frac"] == 0.25
    assert out.metrics["kl_cov/penalty"] == pytest.approx(0.2 / 4, rel=1e-12)
    assert out.metrics["kl_cov/abs_kl"] == pytest.approx((0.1 + 0 + 0.1 + 0.2) / 4, rel=1e-12)


def test_kl_cov_k_is_at_least_one_and_a_share_not_a_percent():
    """frac 2e-3 of 4 tokens: int(0.008) = 0, so k = max(1, 0) = 1 (the code's max(1, ...)); 1000 tokens
    at 2e-3: k = 2, the two largest covariances, computed by a plain sort here."""
    b = _batch([[1.0, 1.0], [-1.0, -1.0]], [[0.0] * 2] * 2)
    KLCov().prepare_minibatch(b, torch.tensor([[-0.2, -1.0], [-0.6, -2.2]], dtype=F64), 0)
    assert int(b.extras[KL_COV_SELECTED].sum()) == 1
    g = torch.Generator().manual_seed(2)
    adv = torch.randn(10, 100, generator=g, dtype=F64)
    cur = -torch.rand(10, 100, generator=g, dtype=F64) * 3
    b = _batch(adv.tolist(), cur.tolist())
    KLCov().prepare_minibatch(b, cur, 0)
    cov = [
        ((float(adv[i, t]) - float(adv.mean())) * (float(cur[i, t]) - float(cur.mean())), i, t)
        for i in range(10)
        for t in range(100)
    ]
    top = sorted(cov, reverse=True)[:2]
    assert sorted(b.extras[KL_COV_SELECTED].nonzero().tolist()) == sorted([[i, t] for _, i, t in top])


def test_kl_cov_micro_batches_sum_to_the_minibatch():
    """The selection is made once on the mini-batch; micro-batches of 1 and 3 rows (with its global
    scale) carry their rows of it, and their losses and gradients add up to the mini-batch's."""
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 5, generator=g, dtype=F64) * 2
    lp = (old + (torch.rand(4, 5, generator=g, dtype=F64) - 0.5)).requires_grad_(True)
    b = _batch(torch.randn(4, 5, generator=g, dtype=F64).tolist(), old.tolist(), mask=[[1] * 5, [1] * 3 + [0] * 2] * 2)
    cfg = KLCov(frac=0.2)
    cfg.prepare_minibatch(b, lp.detach(), 0)
    whole = kl_cov(PolicyOutput(logprobs=lp), b, cfg).loss
    (gw,) = torch.autograd.grad(whole, lp)
    scale = b.scale()
    assert isinstance(scale, LossScale)
    total = sum(
        kl_cov(PolicyOutput(logprobs=lp[idx]), b.select(idx, loss_scale=scale), cfg).loss
        for idx in (torch.tensor([0]), torch.tensor([1, 2, 3]))
    )
    (gm,) = torch.autograd.grad(total, lp)
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gm, gw, rtol=1e-12, atol=1e-14)


def test_kl_cov_gradcheck():
    """float64 finite differences with a fixed selection (|lp - old| away from its kink at 0)."""
    g = torch.Generator().manual_seed(4)
    old = -torch.rand(3, 4, generator=g, dtype=F64) - 0.5
    step = (torch.rand(3, 4, generator=g, dtype=F64) * 0.3 + 0.1) * torch.where(
        torch.rand(3, 4, generator=g) > 0.5, 1.0, -1.0
    ).to(F64)
    lp = (old + step).requires_grad_(True)
    b = _batch(torch.randn(3, 4, generator=g, dtype=F64).tolist(), old.tolist())
    sel = torch.zeros(3, 4, dtype=torch.bool)
    sel[0, 0] = sel[2, 1] = True
    b.extras[KL_COV_SELECTED] = sel
    cfg = KLCov(beta=0.7)
    assert torch.autograd.gradcheck(lambda x: kl_cov(PolicyOutput(logprobs=x), b, cfg).loss, (lp,))


def test_kl_cov_config_errors():
    for kw in ({"frac": 0.0}, {"frac": 2.0}, {"beta": -1.0}):
        with pytest.raises(ValueError, match="KLCov"):
            KLCov(**kw)
