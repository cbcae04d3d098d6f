"""Unit tests of anypo.ops: masked statistics, group statistics, log-probs, entropy, KL, aggregation."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from anypo.ops import (
    aggregate,
    entropy_from_logits,
    group_reduce,
    group_stats,
    kl_estimate,
    last_token_index,
    linear_logprobs,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from anypo.types import LossScale

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
M = [[1, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_masked_sum_and_mean_by_hand(mask_dtype):
    """Masked entries are 1, 2 (row 0) and 4 (row 1): sum 7, mean 7/3; per row 3, 4 and 1.5, 4."""
    mask = torch.tensor(M).to(mask_dtype)
    assert masked_sum(X, mask).item() == 7.0
    assert masked_mean(X, mask).item() == pytest.approx(7 / 3)
    assert masked_sum(X, mask, dim=-1).tolist() == [3.0, 4.0]
    assert masked_mean(X, mask, dim=-1).tolist() == [1.5, 4.0]
    assert masked_sum(X, mask).dtype == torch.float64


def test_masked_ops_ignore_inf_padding_and_empty_rows():
    """-inf or nan on padding must not leak into the sums; an empty row has mean 0 (not nan)."""
    x = torch.tensor([[1.0, float("-inf")], [float("nan"), 2.0], [float("inf"), 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 0], [0, 1], [0, 0]])
    assert masked_sum(x, mask).item() == 3.0
    assert masked_mean(x, mask, dim=-1).tolist() == [1.0, 2.0, 0.0]
    masked_sum(x, mask).backward()
    assert x.grad.tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]


def test_masked_var_unbiased_by_hand():
    """Values 1, 2, 4: mean 7/3, sum of squared deviations (16 + 1 + 25)/9 = 42/9.

    Biased variance 42/27 = 14/9; unbiased 42/18 = 7/3.
    """
    mask = torch.tensor(M)
    assert masked_var(X, mask, unbiased=False).item() == pytest.approx(14 / 9)
    assert masked_var(X, mask, unbiased=True).item() == pytest.approx(7 / 3)


def test_masked_whiten_matches_numpy():
    """Whitened masked entries: (x - mean) / sqrt(var_unbiased + 1e-8), computed with numpy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5)) * 3 + 1
    m = (rng.random((3, 5)) > 0.3).astype(float)
    vals = x[m == 1]
    expected = (x - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8)
    out = masked_whiten(torch.tensor(x), torch.tensor(m))
    np.testing.assert_allclose(out.numpy()[m == 1], expected[m == 1], rtol=1e-10)
    kept = masked_whiten(torch.tensor(x), torch.tensor(m), shift_mean=False)
    np.testing.assert_allclose(kept.numpy()[m == 1], expected[m == 1] + vals.mean(), rtol=1e-10)


def test_last_token_index():
    """Last 1 of [1,1,0,0] is 1, of [1,0,1,0] (a hole) is 2, of an empty row -1."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [1, 2, -1, 3]


def _naive_group_stats(x: list[float], gid: list[int]):
    groups: dict[int, list[float]] = defaultdict(list)
    for v, g in zip(x, gid, strict=True):
        groups[g].append(v)
    mean, std, count = [], [], []
    for g in gid:
        vals = groups[g]
        mu = sum(vals) / len(vals)
        ss = sum((v - mu) ** 2 for v in vals)
        mean.append(mu)
        std.append(math.sqrt(ss / (len(vals) - 1)) if len(vals) > 1 else 0.0)
        count.append(float(len(vals)))
    return mean, std, count


def test_group_stats_naive_vs_vectorised():
    """Python loops over a dict of groups versus the scatter implementation, non-contiguous ids."""
    g = torch.Generator().manual_seed(0)
    gid = torch.tensor([7, 7, 3, 42, 3, 7, 1000, 3, 42, 5, 7, 3])  # sizes 4, 4, 2, 1, 1
    x = torch.randn(len(gid), generator=g, dtype=torch.float64)
    mean, std, count = group_stats(x, gid)
    n_mean, n_std, n_count = _naive_group_stats(x.tolist(), gid.tolist())
    np.testing.assert_allclose(mean.numpy(), n_mean, rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), n_std, rtol=1e-12)
    assert count.tolist() == n_count


def test_group_stats_matches_torch_std_per_group():
    """Each group's std equals torch.std (unbiased) of its members; biased option equals ddof=0."""
    gid = torch.tensor([2, 9, 2, 9, 2, 9, 9])
    x = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    _, std, _ = group_stats(x, gid)
    assert std[0].item() == pytest.approx(torch.tensor([1.0, 0.0, 1.0]).std().item())
    assert std[1].item() == pytest.approx(torch.tensor([0.0, 1.0, 1.0, 1.0]).std().item())
    _, std_b, _ = group_stats(x, gid, unbiased=False)
    assert std_b[1].item() == pytest.approx(np.std([0.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("reduce", ["sum", "mean", "amax", "amin"])
def test_group_reduce_naive_vs_vectorised(reduce):
    gid = torch.tensor([5, 1, 5, 1, 9, 5])
    x = torch.tensor([3.0, -1.0, 0.5, 2.0, 4.0, -2.0])
    fn = {"sum": sum, "mean": lambda v: sum(v) / len(v), "amax": max, "amin": min}[reduce]
    expected = [fn([x[j].item() for j in range(len(x)) if gid[j] == gid[i]]) for i in range(len(x))]
    np.testing.assert_allclose(group_reduce(x, gid, reduce).numpy(), expected, rtol=1e-6)


def test_logprobs_from_logits_matches_log_softmax_and_its_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    out = logprobs_from_logits(logits, ids)
    torch.testing.assert_close(out, ref)
    (g1,) = torch.autograd.grad(out.sum(), logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g1, g2)


def test_logprobs_from_logits_half_precision_is_float32_and_accurate():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 4, 50, generator=g) * 5).to(torch.bfloat16)
    ids = torch.randint(0, 50, (2, 4), generator=g)
    out = logprobs_from_logits(logits, ids)
    ref = torch.log_softmax(logits.double(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_entropy_from_logits():
    """Uniform over V has entropy log V; general case equals -sum p log p."""
    assert entropy_from_logits(torch.zeros(1, 1, 8)).item() == pytest.approx(math.log(8))
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))


def test_linear_logprobs_by_hand():
    """h = [1, 0], W rows [1, 0], [0, 1], [0, 0], no bias: logits z = [1, 0, 0].

    log p(0) = 1 - log(e + 2); with temperature 2, z / 2 = [0.5, 0, 0] and log p(0) = 0.5 - log(e^0.5 + 2),
    log p(1) = -log(e^0.5 + 2). Entropy at temperature 1: log(e + 2) - (e * 1) / (e + 2).
    """
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    lp, ent = linear_logprobs(h, w, None, torch.tensor([0, 0]), temperature=1.0, entropy=True)
    e = math.e
    assert lp.tolist() == pytest.approx([1 - math.log(e + 2)] * 2, abs=1e-6)
    assert ent.tolist() == pytest.approx([math.log(e + 2) - e / (e + 2)] * 2, abs=1e-6)
    lp, ent = linear_logprobs(h, w, None, torch.tensor([0, 1]), temperature=2.0)
    z = math.exp(0.5) + 2
    assert lp.tolist() == pytest.approx([0.5 - math.log(z), -math.log(z)], abs=1e-6)
    assert ent is None


@pytest.mark.parametrize("stash", [0, 128 << 20])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_linear_logprobs_matches_log_softmax_values_and_gradients(chunk, stash):
    """Fused chunked head == log_softmax((h W^T + b) / t)[y] for any chunk size, in value and in the
    gradient w.r.t. h, W and b, whether the backward reuses the forward's softmax (stash) or
    recomputes the logits (stash=0)."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 11, (7,), generator=g)
    up = torch.randn(7, generator=g, dtype=torch.float64)
    lp, ent = linear_logprobs(h, w, b, y, temperature=0.7, entropy=True, chunk=chunk, stash=stash)
    z = (h @ w.T + b) / 0.7
    ref = torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
    torch.testing.assert_close(lp, ref)
    torch.testing.assert_close(ent, entropy_from_logits(z).detach())
    got = torch.autograd.grad((lp * up).sum(), (h, w, b))
    want = torch.autograd.grad((ref * up).sum(), (h, w, b))
    for a, c in zip(got, want, strict=True):
        torch.testing.assert_close(a, c)
    assert torch.autograd.gradcheck(
        lambda h_, w_, b_: linear_logprobs(h_, w_, b_, y, 0.7, chunk=chunk, stash=stash)[0],
        (h, w, b),
        eps=1e-6,
        atol=1e-6,
        # gradcheck runs the backward twice; the second recomputes the softmax the first consumed,
        # which may differ from the stashed one in the last bits
        nondet_tol=1e-12,
    )


def test_linear_logprobs_second_backward_recomputes():
    """The backward overwrites the stashed softmax; a second backward through the same graph
    (retain_graph) must recompute it and give the same gradient as the first."""
    g = torch.Generator().manual_seed(5)
    h = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 9, (6,), generator=g)
    lp, _ = linear_logprobs(h, w, None, y, chunk=4)
    first = torch.autograd.grad(lp.sum(), (h, w), retain_graph=True)
    second = torch.autograd.grad(lp.sum(), (h, w))
    want = torch.autograd.grad(torch.log_softmax(h @ w.T, -1).gather(-1, y[:, None]).sum(), (h, w))
    for a, b_, c in zip(first, second, want, strict=True):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b_, c)


def test_kl_estimators_by_hand():
    """lp = -1, ref = -1.5: d = 0.5, log_rho = -0.5.

    k1 = 0.5; k2 = 0.5 * 0.25 = 0.125; k3 = e^-0.5 - 1 + 0.5 = 0.6065306597 - 0.5 = 0.1065306597.
    """
    lp, ref = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-1.5], dtype=torch.float64)
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.125)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 0.5, rel=1e-12)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(lp, ref, "k4")


def test_kl_k3_clamps_like_verl_low_var_kl():
    """log_rho = ref - lp clamped to [-20, 20], result to [-10, 10].

    lp = 0, ref = -50: log_rho -> -20, e^-20 - 1 + 20 = 19.000000002 -> 10.
    lp = -50, ref = 0: log_rho -> 20, e^20 - 21 ~ 4.85e8 -> 10.
    lp = 0, ref = -5: log_rho = -5, e^-5 + 4 = 4.006737947 (not clamped).
    """
    lp = torch.tensor([0.0, -50.0, 0.0], dtype=torch.float64)
    ref = torch.tensor([-50.0, 0.0, -5.0], dtype=torch.float64)
    out = kl_estimate(lp, ref, "k3")
    assert out.tolist()[:2] == [10.0, 10.0]
    assert out[2].item() == pytest.approx(math.exp(-5) + 4)


L = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]], dtype=torch.float64)
LM = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token_mean", 15 / 5),  # (1+2+3+4+5) / 5 tokens
        ("seq_mean_token_mean", (6 / 3 + 9 / 2) / 2),  # mean of per-sequence means 2 and 4.5
        ("seq_mean_token_sum", 15 / 2),  # per-sequence sums 6 and 9, mean over 2 sequences
        ("seq_mean_token_sum_norm", 15 / (2 * 4)),  # Dr. GRPO: sum / (N_seq * T), T = 4
    ],
)
def test_aggregate_modes_by_hand(mode, expected):
    scale = LossScale(num_tokens=5.0, num_seqs=2.0)
    assert aggregate(L, LM, mode, scale).item() == pytest.approx(expected)


def test_aggregate_uses_global_counts_and_norm_length():
    """With the counts of a larger mini-batch (10 tokens, 4 sequences) the divisors change:
    token_mean 15/10; seq_mean_token_mean (2 + 4.5)/4; seq_mean_token_sum 15/4;
    seq_mean_token_sum_norm with scale.norm_length 6: 15/(4*6), explicit norm_length 10 wins: 15/40.
    """
    scale = LossScale(num_tokens=10.0, num_seqs=4.0, norm_length=6.0)
    assert aggregate(L, LM, "token_mean", scale).item() == pytest.approx(1.5)
    assert aggregate(L, LM, "seq_mean_token_mean", scale).item() == pytest.approx(6.5 / 4)
    assert aggregate(L, LM, "seq_mean_token_sum", scale).item() == pytest.approx(15 / 4)
    assert aggregate(L, LM, "seq_mean_token_sum_norm", scale).item() == pytest.approx(15 / 24)
    assert aggregate(L, LM, "seq_mean_token_sum_norm", scale, norm_length=10).item() == pytest.approx(15 / 40)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(L, LM, "token-mean", scale)
