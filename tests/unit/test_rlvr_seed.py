"""Seed-paper RLVR parts: XRPO's advantage sharpening, DHPO, Reg-GRPO, ROVER.

Expected values are derived by hand in the test docstrings, taken from the worked examples of the
project spec ``shared/papers/rlvr-losses.md`` (printed outputs of an independent numpy computation),
or computed by naive numpy / plain-python re-implementations written from the formulas. Every loss is
checked with float64 finite differences (``torch.autograd.gradcheck``) and the micro-batch contract.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anypo.registry import get
from anypo.types import PolicyOutput, RolloutBatch

# Shared toy batch of the spec (section 1): one prompt, G = 4, padded length 4.
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=np.float64)
LP_OLD = np.array([[-1.0, -0.5, -2.0, 0], [-0.7, -1.2, 0, 0], [-0.3, -0.9, -1.5, -0.4], [-2.2, 0, 0, 0]])
LP = LP_OLD + np.array([[0.1, -0.05, 0.3, 0], [-0.25, 0.02, 0, 0], [0.05, 0.4, -0.1, 0.0], [-0.5, 0, 0, 0]])
A_GRPO = np.array([1, -1, 1, -1]) * 0.5 / (math.sqrt(1 / 3) + 1e-6)  # R = [1, 0, 1, 0]: 0.866024


def toy(rewards=(1.0, 0.0, 1.0, 0.0), adv_seq=None) -> tuple[RolloutBatch, torch.Tensor]:
    """The spec's toy batch (and sequence advantages broadcast over the mask)."""
    batch = RolloutBatch(
        response_mask=torch.tensor(MASK),
        group_ids=torch.zeros(4, dtype=torch.long),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        old_logprobs=torch.tensor(LP_OLD),
    )
    if adv_seq is not None:
        batch.advantages = torch.tensor(np.asarray(adv_seq)[:, None] * MASK)
    return batch, torch.tensor(LP, requires_grad=True)


def adv(name: str, batch: RolloutBatch, **cfg) -> np.ndarray:
    fn, Cfg = get("advantage", name)
    return fn(batch, Cfg(**cfg)).numpy()


def loss_and_grad(name: str, batch: RolloutBatch, lp: torch.Tensor, out_kw=None, **cfg):
    fn, Cfg = get("policy_loss", name)
    out = fn(PolicyOutput(logprobs=lp, **(out_kw or {})), batch, Cfg(**cfg))
    (grad,) = torch.autograd.grad(out.loss, lp)
    return out, grad.numpy()


# ------------------------------------------------------------------------------------------------
# XRPO: novelty-aware advantage sharpening
# ------------------------------------------------------------------------------------------------


def xrpo_batch(rewards, seq_ll_rows, group_ids=None) -> RolloutBatch:
    """Responses whose token log-probs are given row by row (ragged; padded with -inf garbage)."""
    T = max(len(r) for r in seq_ll_rows)
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (T - len(r)) for r in seq_ll_rows])
    old = torch.tensor([list(r) + [float("-inf")] * (T - len(r)) for r in seq_ll_rows], dtype=torch.float64)
    n = len(rewards)
    return RolloutBatch(
        response_mask=mask,
        group_ids=torch.zeros(n, dtype=torch.long) if group_ids is None else torch.tensor(group_ids),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        old_logprobs=old,
    )


# s_i = [-0.2, -0.8, -0.5, -0.4] (the spec's example) from ragged token log-probs
SPEC_ROWS = [[-0.1, -0.3], [-0.8, -0.8, -0.8], [-0.5], [-0.6, -0.2, -0.4, -0.4]]


def test_xrpo_spec_example():
    """Spec 3: R = [1, 1, 0, 0], s = [-0.2, -0.8, -0.5, -0.4]. A = +-0.5 / (sqrt(1/3) + 1e-6) =
    +-0.866024; mean s = -0.475; eta = exp(s + 0.475) = [exp(0.275), exp(-0.325), ...] =
    [1.31653, 0.722527, 0.97531, 1.07788]. Correct answer 0 is more likely than average (eta > 1):
    bonus max(1 - 1.31653, 0) = 0. Correct answer 1: bonus min(1 - 0.722527, 0.866024) = 0.277473,
    A+ = 1.143497. Wrong answers keep A."""
    A = adv("xrpo", xrpo_batch([1, 1, 0, 0], SPEC_ROWS))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = [a, a + 1 - math.exp(-0.325), -a, -a]
    np.testing.assert_allclose(A[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(A[:, 0], [0.866024, 1.1435, -0.866024, -0.866024], rtol=1e-5)  # spec print
    # broadcast over the mask, 0 on padding
    assert A[2, 0] == pytest.approx(-a) and (A[2, 1:] == 0).all() and (A[1, :3] == A[1, 0]).all()


def test_xrpo_cap_and_scope_all():
    """(a) lambda_n = 10, kappa = 0.5: the bonus of answer 1 is min(10 * 0.277473, 0.5 * 0.866024)
    = 0.433012, A+ = 1.5 * 0.866024. (b) scope='all' (the third-party code): wrong answer 2 has eta
    = exp(-0.025), bonus 1 - exp(-0.025) = 0.0246901 (< 0.866), A+ = -0.866024 + 0.0246901; answer 3
    (eta > 1) gets none."""
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    A = adv("xrpo", xrpo_batch([1, 1, 0, 0], SPEC_ROWS), novelty_coef=10.0, bonus_cap=0.5)[:, 0]
    np.testing.assert_allclose(A, [a, 1.5 * a, -a, -a], rtol=1e-12)
    A = adv("xrpo", xrpo_batch([1, 1, 0, 0], SPEC_ROWS), scope="all")[:, 0]
    np.testing.assert_allclose(A, [a, a + 1 - math.exp(-0.325), -a + 1 - math.exp(-0.025), -a], rtol=1e-12)


def test_xrpo_uniform_groups_singletons_and_empty_responses():
    """A group whose rewards are equal has A = 0, so its bonus (capped at kappa |A|) is 0; a
    singleton group gets 0. An empty response is left out of its group's mean s: group 7 below has
    s = [-1.0, -0.2, (empty)], mean -0.6, so answer 0 (correct, eta = exp(-0.4)) gets
    1 - exp(-0.4) = 0.329680 on top of A = (1 - 1/3) / std([1, 0, 0]) = 1.154699 (std = sqrt(1/3)),
    capped at |A|: not binding."""
    rows = [[-1.0], [-0.2, -0.2], [], [-0.3], [-3.0], [-0.1], [-2.0]]
    batch = xrpo_batch([1, 0, 0, 1, 1, 1, 0], rows, group_ids=[7, 7, 7, 2, 2, 2, 5])
    A = adv("xrpo", batch)
    a = (2 / 3) / (math.sqrt(1 / 3) + 1e-6)
    b = (1 / 3) / (math.sqrt(1 / 3) + 1e-6)
    np.testing.assert_allclose(A[:3, 0], [a + 1 - math.exp(-0.4), -b, 0.0], rtol=1e-12)
    assert (A[2] == 0).all()  # empty response: nothing on the (absent) tokens
    np.testing.assert_allclose(A[3:6, 0], 0.0, atol=0)  # all correct: A = 0, no bonus
    np.testing.assert_allclose(A[6, 0], 0.0, atol=0)  # singleton


def test_xrpo_needs_old_logprobs():
    batch = xrpo_batch([1, 0], [[-0.1], [-0.2]])
    batch.old_logprobs = None
    with pytest.raises(ValueError, match="old_logprobs"):
        adv("xrpo", batch)


@pytest.mark.parametrize("bad", [{"novelty_coef": -1.0}, {"bonus_cap": -0.1}, {"scope": "wrong"}, {"eps": -1.0}])
def test_xrpo_config_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        get("advantage", "xrpo")[1](**bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xrpo_naive_equivalence(seed):
    """A plain-python loop over groups (list comprehensions, math.exp) equals the vectorised part on
    random ragged batches with mixed, uniform and singleton groups."""
    rng = np.random.default_rng(seed)
    n = 15
    gids = list(rng.integers(0, 4, size=n))
    R = [float(x) for x in rng.integers(0, 2, size=n)]
    rows = [list(-rng.random(int(k)) * 2) for k in rng.integers(0, 5, size=n)]
    A_full = adv("xrpo", xrpo_batch(R, rows, group_ids=gids), novelty_coef=0.7, bonus_cap=0.8)
    A = A_full[:, 0]
    for i in range(n):
        if not rows[i]:  # an empty response has no token to carry an advantage
            assert (A_full[i] == 0).all()
            continue
        members = [j for j in range(n) if gids[j] == gids[i]]
        mu = sum(R[j] for j in members) / len(members)
        sd = math.sqrt(sum((R[j] - mu) ** 2 for j in members) / max(len(members) - 1, 1))
        a = (R[i] - mu) / (sd + 1e-6)
        s = {j: sum(rows[j]) / len(rows[j]) for j in members if rows[j]}
        if a > 0 and rows[i]:
            eta = math.exp(s[i] - sum(s.values()) / len(s))
            a += min(max(0.7 * (1 - eta), 0.0), 0.8 * abs(a))
        assert A[i] == pytest.approx(a, rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# DHPO: branch-clipped mixture of token and sequence ratios
# ------------------------------------------------------------------------------------------------


def test_dhpo_spec_generic_example():
    """Spec 4-5 (DHPO-generic lines, an independent numpy computation): w = 1/2, eps 0.2 for both
    branches, min(r_mix A, r~ A), seq-mean-token-mean: loss = -0.101564 and the printed r_mix."""
    batch, lp = toy(adv_seq=A_GRPO)
    out, _ = loss_and_grad("dhpo", batch, lp, aggregation="seq_mean_token_mean")
    assert out.loss.item() == pytest.approx(-0.101564, rel=1e-5)
    r = np.exp(LP - LP_OLD)
    s = np.exp(((LP - LP_OLD) * MASK).sum(1) / MASK.sum(1))
    r_mix = (0.5 * r + 0.5 * s[:, None]) * MASK
    spec = [[1.11446, 1.03749, 1.2368, 0], [0.835083, 0.955784, 0, 0], [1.07136, 1.29163, 0.99814, 1.04572]]
    np.testing.assert_allclose(r_mix[:3], spec, rtol=1e-5)
    assert r_mix[3, 0] == pytest.approx(0.606531, rel=1e-5)


def test_dhpo_gradient_by_hand():
    """One response of 2 tokens, A = 1, lp - old = [0.3, -0.1]: r = [e^0.3, e^-0.1], s = e^0.1
    (inside 0.8..1.2). Token 0: r_0 = 1.34986 > 1.2, so r~_0 = (1.2 + s)/2 < r_mix_0 and the clipped
    term is the active one: d r~_0/d lp = (0, 0) from the clipped token branch plus (s/2)(1/2) on each
    token from the sequence branch. Token 1: both ratios inside their bands, r~_1 = r_mix_1, with
    d/dlp_1 = r_1/2 + s/4 and d/dlp_0 = s/4. Token mean over 2 tokens, L = -(r~_0 + r_mix_1) / 2:
    dL/dlp_0 = -(s/4 + s/4)/2 = -s/4, dL/dlp_1 = -(s/4 + r_1/2 + s/4)/2 = -(s + r_1)/4."""
    old = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    batch = RolloutBatch(
        response_mask=torch.ones(1, 2),
        group_ids=torch.zeros(1, dtype=torch.long),
        rewards=torch.ones(1, dtype=torch.float64),
        old_logprobs=old,
        advantages=torch.ones(1, 2, dtype=torch.float64),
    )
    lp = (old + torch.tensor([[0.3, -0.1]], dtype=torch.float64)).requires_grad_(True)
    out, grad = loss_and_grad("dhpo", batch, lp)
    s, r1 = math.exp(0.1), math.exp(-0.1)
    assert out.loss.item() == pytest.approx(-((1.2 + s) / 2 + (r1 + s) / 2) / 2, rel=1e-12)
    np.testing.assert_allclose(grad, [[-s / 4, -(s + r1) / 4]], rtol=1e-12)
    assert out.metrics["policy/clipfrac"] == pytest.approx(0.5)
    assert out.metrics["dhpo/token_clipfrac"] == pytest.approx(0.5) and out.metrics["dhpo/seq_clipfrac"] == 0.0


def test_dhpo_limits_are_ppo_clip_and_gspo():
    """weight = 1 is PPO-clip on the token ratio; weight = 0 is GSPO's clipped sequence ratio with the
    same ranges (the sequence term on every token, token-mean aggregation in both)."""
    batch, lp = toy(adv_seq=A_GRPO)
    for agg in ("token_mean", "seq_mean_token_mean"):
        d1, g1 = loss_and_grad("dhpo", batch, lp, weight=1.0, eps_low_token=0.1, eps_high_token=0.25, aggregation=agg)
        p, gp = loss_and_grad("ppo_clip", batch, lp, eps_low=0.1, eps_high=0.25, aggregation=agg)
        assert d1.loss.item() == pytest.approx(p.loss.item(), rel=1e-12)
        np.testing.assert_allclose(g1, gp, rtol=1e-12, atol=1e-15)
        d0, g0 = loss_and_grad("dhpo", batch, lp, weight=0.0, eps_low_seq=0.05, eps_high_seq=0.1, aggregation=agg)
        q, gq = loss_and_grad("gspo", batch, lp, eps_low=0.05, eps_high=0.1, aggregation=agg)
        assert d0.loss.item() == pytest.approx(q.loss.item(), rel=1e-12)
        np.testing.assert_allclose(g0, gq, rtol=1e-12, atol=1e-15)


def test_dhpo_on_policy_equals_grpo_token_mean():
    """At lp = old (the single update of an on-policy step) r = s = 1 and nothing is clipped. With
    advantages constant along each response, token t receives w_t from its own term (token branch)
    and (1 - w_t') / |o_i| from every term t' of its response (sequence branch, ds_i/dlp_it = 1/|o_i|):
    dL/dlp_it = -A_i (w_t + 1 - mean_t' w_t') / N_tok. The averaged mixing (constant w) gives -A_i /
    N_tok, PPO-clip's token-mean gradient; the entropy-guided mixing moves gradient to tokens whose
    entropy is above their response's mean, keeping each response's total."""
    batch, _ = toy(adv_seq=A_GRPO)
    lp = torch.tensor(LP_OLD, requires_grad=True)
    _, g_ppo = loss_and_grad("ppo_clip", batch, lp)
    expected = -A_GRPO[:, None] * MASK / MASK.sum()
    np.testing.assert_allclose(g_ppo, expected, rtol=1e-12, atol=1e-15)
    _, g = loss_and_grad("dhpo", batch, lp)
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)
    H = np.array([[0.5, 2.0, 1.0, 0], [1.5, 0.1, 0, 0], [0.2, 0.2, 3.0, 0.4], [0.7, 0, 0, 0]])
    _, g = loss_and_grad("dhpo", batch, lp, out_kw={"entropy": torch.tensor(H)}, mixing="entropy")
    Hbar = (H * MASK).sum(1, keepdims=True) / MASK.sum(1, keepdims=True)
    w = H / (H + Hbar)
    w_bar = (w * MASK).sum(1, keepdims=True) / MASK.sum(1, keepdims=True)
    np.testing.assert_allclose(g, expected * (1 + w - w_bar), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g.sum(1), expected.sum(1), rtol=1e-12)  # each response's total kept


def test_dhpo_entropy_weights_by_hand():
    """w_it = H_it / (H_it + mean_t H_it): row H = [1, 3, 0] has mean 4/3, w = [3/7, 9/13, 0]; a row of
    zero entropy gets 1/2; padding is ignored (its garbage never enters the mean)."""
    from anypo.losses.dhpo import entropy_mixing_weights

    H = torch.tensor([[1.0, 3.0, 0.0, float("nan")], [0.0, 0.0, float("inf"), float("inf")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float64)
    w = entropy_mixing_weights(H, mask)
    np.testing.assert_allclose(w[0, :3], [3 / 7, 9 / 13, 0.0], rtol=1e-12)
    np.testing.assert_allclose(w[1, :2], [0.5, 0.5])


def test_dhpo_entropy_mixing_matches_numpy():
    """The entropy-guided loss equals a numpy re-implementation of the formula on the spec toy, and
    its gradient does not flow into the entropy (a stop-gradient weight)."""
    batch, lp = toy(adv_seq=A_GRPO)
    H = np.array([[0.5, 2.0, 1.0, 0], [1.5, 0.1, 0, 0], [0.2, 0.2, 3.0, 0.4], [0.7, 0, 0, 0]])
    ent = torch.tensor(H, requires_grad=True)
    out = get("policy_loss", "dhpo")[0](
        PolicyOutput(logprobs=lp, entropy=ent), batch, get("policy_loss", "dhpo")[1](mixing="entropy")
    )
    Hbar = (H * MASK).sum(1, keepdims=True) / MASK.sum(1, keepdims=True)
    w = H / (H + Hbar)
    r = np.exp(LP - LP_OLD)
    s = np.exp(((LP - LP_OLD) * MASK).sum(1) / MASK.sum(1))[:, None]
    A = A_GRPO[:, None]
    mix = w * r + (1 - w) * s
    mix_c = w * np.clip(r, 0.8, 1.2) + (1 - w) * np.clip(s, 0.8, 1.2)
    expected = (np.maximum(-A * mix, -A * mix_c) * MASK).sum() / MASK.sum()
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    out.loss.backward()
    assert ent.grad is None
    assert get("policy_loss", "dhpo")[1](mixing="entropy").needs_entropy
    assert not get("policy_loss", "dhpo")[1]().needs_entropy
    with pytest.raises(ValueError, match="entropy"):
        loss_and_grad("dhpo", batch, lp, mixing="entropy")


@pytest.mark.parametrize(
    "bad", [{"mixing": "geometric"}, {"weight": 1.5}, {"eps_low_seq": -0.1}, {"aggregation": "sum"}]
)
def test_dhpo_config_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        get("policy_loss", "dhpo")[1](**bad)


# ------------------------------------------------------------------------------------------------
# Reg-GRPO: regress the advantage
# ------------------------------------------------------------------------------------------------

D_TOY = np.array([0.1 - 0.05 + 0.3, -0.25 + 0.02, 0.05 + 0.4 - 0.1 + 0.0, -0.5])  # sum_t (lp - old)


def test_reg_grpo_by_hand():
    """Spec toy, beta = 1: d = [0.35, -0.23, 0.35, -0.5], L_i = (A_i - d_i)^2 with A = +-0.866024,
    loss = mean_i L_i = ((0.516024)^2 + (0.636024)^2 + (0.516024)^2 + (0.366024)^2) / 4; every token
    of response i gets dL/dlp_it = (1/4) 2 (A_i - d_i)(-1) = -(A_i - d_i) / 2, padding 0."""
    batch, lp = toy(adv_seq=A_GRPO)
    out, grad = loss_and_grad("reg_grpo", batch, lp)
    res = A_GRPO - D_TOY
    assert out.loss.item() == pytest.approx(np.mean(res**2), rel=1e-12)
    assert out.loss.item() == pytest.approx((0.516024**2 + 0.636024**2 + 0.516024**2 + 0.366024**2) / 4, rel=1e-5)
    np.testing.assert_allclose(grad, -(res / 2)[:, None] * MASK, rtol=1e-12, atol=1e-15)
    assert out.metrics["reg_grpo/prediction_mean"] == pytest.approx(D_TOY.mean())
    assert out.metrics["reg_grpo/residual_abs"] == pytest.approx(np.abs(res).mean())


def test_reg_grpo_length_normalised_and_beta():
    """beta = 2, length_normalize: pred_i = 2 d_i / |o_i| (|o| = [3, 2, 4, 1]); dL/dlp_it =
    (1/4) 2 (A_i - pred_i)(-2 / |o_i|)."""
    batch, lp = toy(adv_seq=A_GRPO)
    L = MASK.sum(1)
    out, grad = loss_and_grad("reg_grpo", batch, lp, beta=2.0, length_normalize=True)
    res = A_GRPO - 2 * D_TOY / L
    assert out.loss.item() == pytest.approx(np.mean(res**2), rel=1e-12)
    np.testing.assert_allclose(grad, (-res / L)[:, None] * MASK, rtol=1e-12, atol=1e-15)


def test_reg_grpo_on_policy_is_scaled_reinforce():
    """At lp = old (d = 0) L_i = A_i^2 and dL/dlp_it = -2 beta A_i / N: twice beta times REINFORCE's
    gradient with seq_mean_token_sum aggregation (-A_i / N)."""
    batch, _ = toy(adv_seq=A_GRPO)
    lp = torch.tensor(LP_OLD, requires_grad=True)
    out, grad = loss_and_grad("reg_grpo", batch, lp, beta=0.5)
    _, g_rf = loss_and_grad("reinforce", batch, lp, aggregation="seq_mean_token_sum")
    assert out.loss.item() == pytest.approx(np.mean(A_GRPO**2), rel=1e-12)
    np.testing.assert_allclose(grad, 2 * 0.5 * g_rf, rtol=1e-12, atol=1e-15)


def test_reg_grpo_reference_anchor():
    """anchor='ref': d_i = sum_t (lp - ref); the spec's lp_ref = lp_old + delta_ref, so d_i =
    sum_t (delta_lp - delta_ref) = [0.35 - (-0.1), -0.23 - 0.2, 0.35 - 0.0, -0.5 - 0.4]; it needs the
    reference log-probs (declared, and a clear error without them), not the old ones."""
    batch, lp = toy(adv_seq=A_GRPO)
    delta_ref = np.array([[-0.2, 0.1, 0.0, 0], [0.3, -0.1, 0, 0], [0.0, 0.2, -0.3, 0.1], [0.4, 0, 0, 0]])
    batch.ref_logprobs = torch.tensor(LP_OLD + delta_ref)
    batch.old_logprobs = None
    d = D_TOY - (delta_ref * MASK).sum(1)
    np.testing.assert_allclose(d, [0.45, -0.43, 0.35, -0.9], rtol=1e-12)
    out, grad = loss_and_grad("reg_grpo", batch, lp, anchor="ref")
    assert out.loss.item() == pytest.approx(np.mean((A_GRPO - d) ** 2), rel=1e-12)
    Cfg = get("policy_loss", "reg_grpo")[1]
    assert Cfg(anchor="ref").needs_ref_logprobs and not Cfg().needs_ref_logprobs
    batch.ref_logprobs = None
    with pytest.raises(ValueError, match="ref_logprobs"):
        loss_and_grad("reg_grpo", batch, lp, anchor="ref")


@pytest.mark.parametrize("bad", [{"beta": 0.0}, {"anchor": "init"}, {"norm_length": -1.0}])
def test_reg_grpo_config_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        get("policy_loss", "reg_grpo")[1](**bad)


# ------------------------------------------------------------------------------------------------
# Every loss configuration: float64 finite-difference gradients and the micro-batch contract
# ------------------------------------------------------------------------------------------------

LOSS_CONFIGS = [
    ("dhpo", {}),
    ("dhpo", {"mixing": "entropy", "aggregation": "seq_mean_token_mean"}),
    ("dhpo", {"weight": 0.3, "eps_low_seq": 3e-4, "eps_high_seq": 4e-4, "tis": "token"}),
    ("reg_grpo", {}),
    ("reg_grpo", {"beta": 0.3, "length_normalize": True, "aggregation": "token_mean"}),
    ("rover", {}),
    ("rover", {"old_means": "batch", "rho": 0.7, "next_q_scale": 0.5}),
    ("rover", {"level": "response"}),
    ("rover", {"clip": 0.2, "old_means": "batch"}),
    ("mdpo_lm", {}),
    ("mdpo_lm", {"kl": "exact", "total_iterations": 4}),
]
NB, TB, VB = 8, 6, 5


def random_batch(seed: int, spread: float) -> tuple[RolloutBatch, torch.Tensor, dict]:
    """8 sequences in 2 groups of 4 (lengths 6, 4, 1, 3, 5, 2, 6, 4, one hole), GRPO advantages plus
    token noise, and the optional inputs some parts declare: entropy, logits [N, T, V] and the old
    policy's mean log-softmax."""
    g = torch.Generator().manual_seed(seed)
    lengths = [6, 4, 1, 3, 5, 2, 6, 4]
    mask = torch.tensor([[1] * n + [0] * (TB - n) for n in lengths])
    mask[6, 2] = 0
    old = -torch.rand(NB, TB, generator=g, dtype=torch.float64) * 2
    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([3, 3, 3, 3, 9, 9, 9, 9]),
        rewards=torch.tensor([1.0, 0, 1, 0, 0, 0, 1, 1], dtype=torch.float64),
        old_logprobs=old,
        rollout_logprobs=old + (torch.rand(NB, TB, generator=g, dtype=torch.float64) - 0.5) * 0.1,
    )
    fn, Cfg = get("advantage", "grpo")
    batch.advantages = fn(batch, Cfg()) + torch.randn(NB, TB, generator=g, dtype=torch.float64) * 0.3 * mask
    batch.extras["old_mean_logprobs"] = -torch.rand(NB, TB, generator=g, dtype=torch.float64) - 1.0
    batch.extras["old_full_logprobs"] = torch.log_softmax(torch.randn(NB, TB, VB, generator=g, dtype=torch.float64), -1)
    lp = old + (torch.rand(NB, TB, generator=g, dtype=torch.float64) * 2 - 1) * spread
    extra = {
        "entropy": torch.rand(NB, TB, generator=g, dtype=torch.float64) * 2,
        "logits": torch.randn(NB, TB, VB, generator=g, dtype=torch.float64),
    }
    return batch, lp.requires_grad_(True), extra


def _out(name: str, config, lp: torch.Tensor, extra: dict, index=None) -> PolicyOutput:
    """PolicyOutput with the optional fields the config declares (rows ``index``)."""
    pick = (lambda x: x) if index is None else (lambda x: x[index])
    kw = {}
    if config.needs_entropy:
        kw["entropy"] = pick(extra["entropy"])
    if config.needs_logits:
        kw["logits"] = pick(extra["logits"])
    return PolicyOutput(logprobs=lp, **kw)


@pytest.mark.parametrize("spread", [0.05, 0.5])
@pytest.mark.parametrize(("name", "cfg"), LOSS_CONFIGS)
def test_gradcheck(name, cfg, spread):
    """torch.autograd.gradcheck in float64 of the loss as a function of the current log-probs."""
    batch, lp, extra = random_batch(int(spread * 100), spread)
    fn, Cfg = get("policy_loss", name)
    config = Cfg(**cfg)
    assert torch.autograd.gradcheck(
        lambda x: fn(_out(name, config, x, extra), batch, config).loss, (lp,), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize(("name", "cfg"), LOSS_CONFIGS)
def test_microbatch_contract(name, cfg):
    """Micro-batches (uneven, shuffled, groups split) built with select(idx, loss_scale=batch.scale())
    sum to the mini-batch's loss and gradient."""
    batch, lp, extra = random_batch(7, 0.4)
    fn, Cfg = get("policy_loss", name)
    config = Cfg(**cfg)
    whole = fn(_out(name, config, lp, extra), batch, config).loss
    (g_whole,) = torch.autograd.grad(whole, lp)
    total = torch.zeros((), dtype=torch.float64)
    for idx in ([5, 0, 2], [7], [1, 3, 4, 6]):
        index = torch.tensor(idx)
        micro = batch.select(index, loss_scale=batch.scale())
        total = total + fn(_out(name, config, lp[index], extra, index), micro, config).loss
    (g_micro,) = torch.autograd.grad(total, lp)
    torch.testing.assert_close(total, whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_micro, g_whole, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# ROVER: uniform-policy Q from the policy's own log-probs
# ------------------------------------------------------------------------------------------------


def _lsm(x: np.ndarray) -> np.ndarray:
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def rover_spec_batch():
    """Spec 9's example (G = 2, T = 3, V = 4, numpy default_rng(0)): logits of the old and the
    current policy, the sampled tokens, their log-probs, M_old and the GRPO advantages of R = [1, 0]."""
    rng = np.random.default_rng(0)
    logits_old = rng.normal(size=(2, 3, 4))
    logits_new = logits_old + 0.1 * rng.normal(size=(2, 3, 4))
    tokens = np.array([[0, 2, 1], [3, 1, 0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]], float)
    lp_new = np.take_along_axis(_lsm(logits_new), tokens[..., None], -1)[..., 0]
    lp_old = np.take_along_axis(_lsm(logits_old), tokens[..., None], -1)[..., 0]
    r_tilde = np.array([0.5, -0.5]) / (math.sqrt(0.5) + 1e-6)
    batch = RolloutBatch(
        response_mask=torch.tensor(mask),
        group_ids=torch.zeros(2, dtype=torch.long),
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        old_logprobs=torch.tensor(lp_old),
        advantages=torch.tensor(r_tilde[:, None] * mask),
        extras={"old_mean_logprobs": torch.tensor(_lsm(logits_old).mean(-1))},
    )
    return batch, torch.tensor(lp_new * mask, requires_grad=True), torch.tensor(logits_new), (lp_new, lp_old, mask)


def test_rover_spec_example():
    """Spec 9 (an independent numpy computation of the official code's formulas): loss = 0.538425 and
    the printed dL/dlp_new; the bootstrap target for token t uses M_theta - M_old at t + 1."""
    batch, lp, logits, _ = rover_spec_batch()
    out, grad = loss_and_grad("rover", batch, lp, out_kw={"logits": logits}, old_means="batch")
    assert out.loss.item() == pytest.approx(0.538425, rel=1e-5)
    spec = [[-0.242471, -0.303277, -0.270807], [0.33283, 0.309611, 0]]
    np.testing.assert_allclose(grad, spec, rtol=1e-5, atol=1e-6)
    assert out.metrics["rover/target_mean"] == pytest.approx(
        (0.720369 + 0.706901 + 0.707106 - 0.732025 - 0.707106) / 5, rel=1e-5
    )


def test_rover_bootstrap_by_hand():
    """The target by hand: y_it = A_i + rho (M_theta - M_old)(s_i,t+1) m_i,t+1, 0 bootstrap at the last
    token and past the end; loss = sum m (Q - y)^2 / 5 with Q = rho (lp - old); dL/dlp = 2 rho (Q - y)
    m / 5. With rho = 0.5 and c = 2 the bootstrap is c rho = 1 times the M difference."""
    batch, lp, logits, (lp_new, lp_old, mask) = rover_spec_batch()
    out, grad = loss_and_grad(
        "rover", batch, lp, out_kw={"logits": logits}, old_means="batch", rho=0.5, next_q_scale=2.0
    )
    m_new = np.array([[np.mean(np.log(np.exp(v) / np.exp(v).sum())) for v in row] for row in logits.numpy()])
    m_old = batch.extras["old_mean_logprobs"].numpy()
    A = batch.advantages.numpy()
    y = A.copy()
    for i in range(2):
        for t in range(2):
            y[i, t] += 1.0 * (m_new[i, t + 1] - m_old[i, t + 1]) * mask[i, t + 1]
    Q = 0.5 * (lp_new - lp_old) * mask
    assert out.loss.item() == pytest.approx((((Q - y) ** 2) * mask).sum() / 5, rel=1e-12)
    np.testing.assert_allclose(grad, 2 * 0.5 * (Q - y) * mask / 5, rtol=1e-10, atol=1e-14)
    assert out.metrics["rover/next_q_mean"] == pytest.approx(((y - A) * mask).sum() / 5, rel=1e-10)


def test_rover_on_policy_mode():
    """old_means='on_policy' (the preset): M_old = M_theta, the bootstrap is 0 and no logits are
    needed. At lp = old, Q = 0, loss = mean_tokens A^2 and dL/dlp = -2 rho A / N_tok: REINFORCE with
    token-mean, scaled by 2 rho. The config asks for one update per rollout; next_q_scale = 0
    (target_adv_only) needs no such thing."""
    batch, _ = toy(adv_seq=A_GRPO)
    lp = torch.tensor(LP_OLD, requires_grad=True)
    out, grad = loss_and_grad("rover", batch, lp, rho=1.5)
    assert out.loss.item() == pytest.approx(((A_GRPO[:, None] ** 2) * MASK).sum() / 10, rel=1e-12)
    np.testing.assert_allclose(grad, -2 * 1.5 * A_GRPO[:, None] * MASK / 10, rtol=1e-12, atol=1e-15)
    Cfg = get("policy_loss", "rover")[1]
    assert Cfg().requires_on_policy and not Cfg().needs_logits and not Cfg().needs_old_mean_logprobs
    assert not Cfg(next_q_scale=0.0).requires_on_policy
    b = Cfg(old_means="batch")
    assert b.needs_logits and b.needs_old_mean_logprobs and not b.requires_on_policy
    assert not Cfg(old_means="batch", level="response").needs_logits


def test_rover_refusal_names_the_option_that_allows_several_updates():
    """The rover preset with two mini-batches per rollout is refused, and the refusal names
    --algo.loss.old-means batch, under which the same run is accepted."""
    import dataclasses

    from anypo.algorithms import PRESETS
    from anypo.config import TrainConfig
    from anypo.models import ModelConfig
    from anypo.validate import train_config_problems

    algo = dataclasses.replace(PRESETS["rover"].build(), minibatch_prompts=1)
    cfg = TrainConfig(model=ModelConfig(name="tiny"), algo=algo, prompts_per_step=2)
    (problem,) = [p for p in train_config_problems(cfg) if "only correct on-policy" in p]
    assert problem.endswith(
        ", or --algo.loss.old-means batch (the behaviour policy's mean log-probs, stored by the old-log-prob pass)"
    )
    batch_algo = dataclasses.replace(algo, policy_loss=dataclasses.replace(algo.policy_loss, old_means="batch"))
    assert not [p for p in train_config_problems(dataclasses.replace(cfg, algo=batch_algo)) if "on-policy" in p]


def test_rover_response_level_by_hand():
    """level='response' (the code's response_level_rover_loss): L_i = (mean_t Q_it - A_i)^2, mean
    over responses; with the toy's Q = lp - old: mean_t Q = D_TOY / |o|; dL/dlp_it = (2/4)(mean Q_i -
    A_i) / |o_i|."""
    batch, lp = toy(adv_seq=A_GRPO)
    L = MASK.sum(1)
    out, grad = loss_and_grad("rover", batch, lp, level="response")
    res = D_TOY / L - A_GRPO
    assert out.loss.item() == pytest.approx(np.mean(res**2), rel=1e-12)
    np.testing.assert_allclose(grad, (0.5 * res / L)[:, None] * MASK, rtol=1e-12, atol=1e-15)


def test_rover_clip_by_hand():
    """Rover clip eps = 0.2: Q = log-ratio of the toy (rho 1). Token (0, 2): Q = 0.3 > log 1.2 =
    0.1823 and its target A = 0.866 > Q: held at log 1.2 (no gradient); so is token (2, 1), Q = 0.4.
    Tokens (1, 0) and (3, 0): Q = -0.25 and -0.5 < log 0.8 = -0.2231 with target -0.866 < Q: held at
    log 0.8. Every other token (|Q| inside the band) keeps 2 (Q - A) / 10."""
    batch, lp = toy(adv_seq=A_GRPO)
    out, grad = loss_and_grad("rover", batch, lp, clip=0.2)
    Q = (LP - LP_OLD) * MASK
    A = A_GRPO[:, None] * MASK
    held = np.zeros_like(MASK, dtype=bool)
    held[0, 2] = held[2, 1] = held[1, 0] = held[3, 0] = True
    Qc = np.where(held, 0.0, Q)
    Qc[0, 2] = Qc[2, 1] = math.log(1.2)
    Qc[1, 0] = Qc[3, 0] = math.log(0.8)
    assert out.loss.item() == pytest.approx((((Qc - A) ** 2) * MASK).sum() / 10, rel=1e-12)
    np.testing.assert_allclose(grad, np.where(held, 0.0, 2 * (Q - A) * MASK / 10), rtol=1e-12, atol=1e-15)
    assert out.metrics["rover/clip_high_frac"] == pytest.approx(0.2) and out.metrics[
        "rover/clip_low_frac"
    ] == pytest.approx(0.2)


def test_mean_log_softmax_by_hand_and_chunked():
    """logits [0, ln 3]: softmax [1/4, 3/4], M = (ln 1/4 + ln 3/4) / 2; the same in chunks of one."""
    from anypo.losses.rover import mean_log_softmax

    x = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]], dtype=torch.float64)
    m = mean_log_softmax(x)
    np.testing.assert_allclose(m.numpy(), [[(math.log(0.25) + math.log(0.75)) / 2, math.log(0.5)]], rtol=1e-12)
    big = torch.randn(3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(mean_log_softmax(big, chunk=1), torch.log_softmax(big, -1).mean(-1))
    assert mean_log_softmax(big.float().requires_grad_(True)).requires_grad is False


def test_rover_batch_mode_errors():
    batch, lp, logits, _ = rover_spec_batch()
    with pytest.raises(ValueError, match="logits"):
        loss_and_grad("rover", batch, lp, old_means="batch")
    batch.extras = {}
    with pytest.raises(ValueError, match="old_mean_logprobs"):
        loss_and_grad("rover", batch, lp, out_kw={"logits": logits}, old_means="batch")


@pytest.mark.parametrize(
    "bad",
    [
        {"rho": 0.0},
        {"next_q_scale": -1.0},
        {"level": "seq"},
        {"clip": 1.0},
        {"old_means": "ref"},
        {"aggregation": "seq_mean_token_mean"},
    ],
)
def test_rover_config_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        get("policy_loss", "rover")[1](**bad)


# ------------------------------------------------------------------------------------------------
# MDPO on token policies (the loss; the loop does not provide pi_k's full distributions yet)
# ------------------------------------------------------------------------------------------------

PI_OLD = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
PI_NEW = np.array([[0.55, 0.28, 0.17], [0.12, 0.55, 0.33]])


def mdpo_spec_batch():
    """Spec 17: two states, V = 3, sampled tokens a = [0, 2], advantages [1, -0.5]; one response of
    2 tokens. logits = log pi_new (softmax of log-probs is the distribution itself)."""
    a = [0, 2]
    batch = RolloutBatch(
        response_mask=torch.ones(1, 2),
        group_ids=torch.zeros(1, dtype=torch.long),
        rewards=torch.zeros(1, dtype=torch.float64),
        old_logprobs=torch.tensor([[math.log(PI_OLD[0, a[0]]), math.log(PI_OLD[1, a[1]])]], dtype=torch.float64),
        advantages=torch.tensor([[1.0, -0.5]], dtype=torch.float64),
        extras={"old_full_logprobs": torch.tensor(np.log(PI_OLD))[None]},
    )
    lp = torch.tensor([[math.log(PI_NEW[0, a[0]]), math.log(PI_NEW[1, a[1]])]], dtype=torch.float64, requires_grad=True)
    return batch, lp, torch.tensor(np.log(PI_NEW))[None]


def test_mdpo_spec_example():
    """Spec 17 (official schedule t_k = 1 - (k - 1)/K, k = 3, K = 10: t = 0.8): ratio = [1.1, 1.1],
    KL(pi_new || pi_old) = [0.00547438, 0.00547469], loss = -(mean(r A) - mean(KL) / t) = -0.268157.
    The iteration comes from the part's state: 15 optimizer steps at 5 per iteration is k = 3."""
    batch, lp, logits = mdpo_spec_batch()
    batch.part_state = {"optimizer_steps": 15}
    out, _ = loss_and_grad("mdpo_lm", batch, lp, out_kw={"logits": logits}, kl="exact", total_iterations=10)
    assert out.loss.item() == pytest.approx(-0.268157, rel=1e-5)
    assert out.metrics["mdpo/step_size"] == pytest.approx(0.8)
    assert out.metrics["mdpo/kl"] == pytest.approx((0.00547438 + 0.00547469) / 2, rel=1e-5)


def test_mdpo_exact_kl_gradient_by_hand():
    """dKL(p || q)/dz_j = p_j (log p_j - log q_j - KL) for p = softmax(z): the chunked, recomputing
    backward equals that formula written in numpy, on random logits (chunk of one position)."""
    from anypo.losses.mdpo import exact_kl

    rng = np.random.default_rng(3)
    z = rng.normal(size=(2, 3, 5))
    q = _lsm(rng.normal(size=(2, 3, 5)))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    zt = torch.tensor(z, requires_grad=True)
    kl = exact_kl(zt, torch.tensor(q), mask, chunk=1)
    lp = _lsm(z)
    p = np.exp(lp)
    kl_np = (p * (lp - q)).sum(-1) * mask.numpy()
    np.testing.assert_allclose(kl.detach().numpy(), kl_np, rtol=1e-12, atol=1e-15)
    w = np.arange(1, 7, dtype=float).reshape(2, 3)
    (g,) = torch.autograd.grad((kl * torch.tensor(w)).sum(), zt)
    expected = w[..., None] * mask.numpy()[..., None] * p * (lp - q - (p * (lp - q)).sum(-1, keepdims=True))
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda x: exact_kl(x, torch.tensor(q), mask, chunk=2), (zt,), eps=1e-6, atol=1e-8)


def test_mdpo_sampled_kl_and_gradient_by_hand():
    """kl='sampled' on the spec toy: KL_it = r log r - r + 1 with r = exp(lp - old); L = token mean of
    -A r + KL / t, t = 1 (K = 0); dL/dlp = (-A r + r log r) / 10 (d/dlp (r log r - r) = r log r)."""
    batch, lp = toy(adv_seq=A_GRPO)
    out, grad = loss_and_grad("mdpo_lm", batch, lp)
    lr = (LP - LP_OLD) * MASK
    r = np.exp(lr)
    A = A_GRPO[:, None]
    assert out.loss.item() == pytest.approx(((-A * r + r * lr - r + 1) * MASK).sum() / 10, rel=1e-12)
    np.testing.assert_allclose(grad, (-A * r + r * lr) * MASK / 10, rtol=1e-12, atol=1e-15)
    assert out.metrics["mdpo/step_size"] == 1.0


def test_mdpo_schedule_and_state():
    """t_k = 1 - (k - 1)/K from the official code, with k counted from 0 (first iteration 1 + 1/K),
    floored at 1/K past the planned K; the state counts optimizer steps."""
    from anypo.losses.mdpo import mdpo_step_size

    assert mdpo_step_size(0, 10) == pytest.approx(1.1)
    assert mdpo_step_size(9, 10) == pytest.approx(0.2)
    assert mdpo_step_size(30, 10) == pytest.approx(0.1)
    assert mdpo_step_size(7, 0) == 1.0
    Cfg = get("policy_loss", "mdpo_lm")[1]
    cfg = Cfg(total_iterations=10, updates_per_iteration=2)
    state = cfg.init_state()
    for _ in range(5):
        cfg.update_state(state, {})
    assert state == {"optimizer_steps": 5} and cfg.stateful and not Cfg().stateful
    assert Cfg(kl="exact").needs_logits and Cfg(kl="exact").needs_old_full_logprobs and not Cfg().needs_logits


def test_mdpo_exact_needs_the_old_distributions():
    batch, lp, logits = mdpo_spec_batch()
    with pytest.raises(ValueError, match="old_full_logprobs"):
        loss_and_grad("mdpo_lm", batch, lp, kl="exact")
    batch.extras = {}
    with pytest.raises(ValueError, match="old_full_logprobs"):
        loss_and_grad("mdpo_lm", batch, lp, out_kw={"logits": logits}, kl="exact")


@pytest.mark.parametrize("bad", [{"kl": "k3"}, {"total_iterations": -1}, {"updates_per_iteration": 0}])
def test_mdpo_config_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        get("policy_loss", "mdpo_lm")[1](**bad)
