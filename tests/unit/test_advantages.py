"""Advantage estimators: hand-derived values (project spec rlvr-losses.md sections 1, 2.1, 2.6) and
naive-versus-vectorised equivalence."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

from anypo.advantages import discounted_returns, gae_advantages_returns
from anypo.registry import get
from anypo.types import RolloutBatch

# Shared toy batch of the spec (section 1): one prompt, G = 4, padded length 4.
MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
R = [1.0, 0.0, 1.0, 0.0]
LP_OLD = [[-1.0, -0.5, -2.0, 0], [-0.7, -1.2, 0, 0], [-0.3, -0.9, -1.5, -0.4], [-2.2, 0, 0, 0]]
D_REF = [[-0.2, 0.1, 0.0, 0], [0.3, -0.1, 0, 0], [0.0, 0.2, -0.3, 0.1], [0.4, 0, 0, 0]]


def toy_batch(dtype=torch.float64, **kw) -> RolloutBatch:
    lp_old = torch.tensor(LP_OLD, dtype=dtype)
    return RolloutBatch(
        response_mask=torch.tensor(MASK),
        group_ids=torch.zeros(4, dtype=torch.long),
        rewards=torch.tensor(R, dtype=dtype),
        old_logprobs=lp_old,
        ref_logprobs=lp_old + torch.tensor(D_REF, dtype=dtype),
        **kw,
    )


def adv(name: str, batch: RolloutBatch, **cfg) -> torch.Tensor:
    fn, Cfg = get("advantage", name)
    return fn(batch, Cfg(**cfg))


def test_grpo_spec_values():
    """Spec 2.1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735, A = +-0.5/0.57735 = +-0.866024,
    broadcast over the mask (0 on padding)."""
    A = adv("grpo", toy_batch())
    expected = np.array([0.866024, -0.866024, 0.866024, -0.866024])[:, None] * np.array(MASK)
    np.testing.assert_allclose(A.numpy(), expected, rtol=1e-5, atol=1e-12)


def test_dr_grpo_and_rloo_spec_values():
    """Dr. GRPO: R - mean = +-0.5. RLOO: R_i - (sum - R_i)/3 = 1 - 1/3 = 2/3 or 0 - 2/3 = -2/3."""
    np.testing.assert_allclose(adv("dr_grpo", toy_batch())[:, 0].numpy(), [0.5, -0.5, 0.5, -0.5])
    np.testing.assert_allclose(adv("rloo", toy_batch())[:, 0].numpy(), [2 / 3, -2 / 3, 2 / 3, -2 / 3], rtol=1e-12)
    np.testing.assert_allclose(adv("grpo", toy_batch(), scale="none").numpy(), adv("dr_grpo", toy_batch()).numpy())


def test_grpo_batch_std_scaling_numpy():
    """scale="batch": (R_i - group mean) / (std of all rewards, ddof=1, + 1e-6)."""
    R2 = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    gid = np.array([4, 4, 4, 8, 8, 8])
    batch = RolloutBatch(torch.ones(6, 2), torch.tensor(gid), torch.tensor(R2))
    means = np.array([R2[gid == g].mean() for g in gid])
    expected = (R2 - means) / (R2.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(adv("grpo", batch, scale="batch")[:, 0].numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_singleton_groups_get_zero_advantage(name):
    batch = RolloutBatch(torch.ones(3, 2), torch.tensor([1, 2, 2]), torch.tensor([5.0, 1.0, 0.0]))
    A = adv(name, batch)
    assert A[0].tolist() == [0.0, 0.0]
    assert torch.isfinite(A).all()


def _naive(name: str, rewards: list[float], gid: list[int]) -> list[float]:
    """Python-loop reference of the group estimators."""
    groups: dict[int, list[float]] = defaultdict(list)
    for r, g in zip(rewards, gid, strict=True):
        groups[g].append(r)
    out = []
    for r, g in zip(rewards, gid, strict=True):
        vals = groups[g]
        n = len(vals)
        mu = sum(vals) / n
        if name == "grpo":
            std = (sum((v - mu) ** 2 for v in vals) / (n - 1)) ** 0.5 if n > 1 else 0.0
            out.append((r - mu) / (std + 1e-6))
        elif name == "dr_grpo":
            out.append(r - mu)
        else:  # rloo
            out.append(r - (sum(vals) - r) / (n - 1) if n > 1 else 0.0)
    return out


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_naive_vs_vectorised(name):
    """Shuffled, non-contiguous group ids with sizes 5, 3, 4, 1 and random rewards."""
    g = torch.Generator().manual_seed(0)
    gid = torch.tensor([11] * 5 + [2] * 3 + [900] * 4 + [7])
    perm = torch.randperm(len(gid), generator=g)
    gid = gid[perm]
    rewards = torch.randint(0, 3, (len(gid),), generator=g).double() / 2
    mask = (torch.rand(len(gid), 6, generator=g) > 0.3).long()
    A = adv(name, RolloutBatch(mask, gid, rewards))
    expected = np.array(_naive(name, rewards.tolist(), gid.tolist()))[:, None] * mask.numpy()
    np.testing.assert_allclose(A.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_token_rewards_add_to_outcome():
    """Sequence reward = R + sum_t m * token_rewards: rows 0 and 1 get 1 + 0.5 = 1.5 and 0 + 0 = 0."""
    tr = torch.tensor([[0.25, 0.25, 9.0], [0.0, 0.0, 0.0]], dtype=torch.float64)  # 9.0 is padding
    batch = RolloutBatch(
        torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([0, 0]), torch.tensor([1.0, 0.0]).double(), token_rewards=tr
    )
    np.testing.assert_allclose(adv("dr_grpo", batch)[:, 0].numpy(), [0.75, -0.75])


def test_reinforce_pp_spec_values():
    """Spec 2.8: token rewards -0.05 * (old - ref) on the mask + R on the last token, gamma 1,
    returns = reverse cumulative sums, then whitening over all 10 tokens (unbiased var, +1e-8)."""
    A = adv("reinforce_pp", toy_batch(), kl_coef=0.05, gamma=1.0)
    expected = [
        [0.612033, 0.632922, 0.622478, 0],
        [-1.44548, -1.47682, 0, 0],
        [0.622478, 0.622478, 0.601589, 0.632922],
        [-1.4246, 0, 0, 0],
    ]
    np.testing.assert_allclose(A.numpy(), expected, rtol=1e-5, atol=1e-12)
    # the un-whitened returns of the same spec snippet
    from anypo.advantages import token_level_rewards

    batch = toy_batch()
    ret = discounted_returns(token_level_rewards(batch, 0.05), batch.mask, 1.0)
    exp_ret = [[0.995, 1.005, 1, 0], [0.01, -0.005, 0, 0], [1, 1, 0.99, 1.005], [0.02, 0, 0, 0]]
    np.testing.assert_allclose(ret.numpy(), exp_ret, rtol=1e-5, atol=1e-12)


def test_reinforce_pp_needs_reference():
    fn, Cfg = get("advantage", "reinforce_pp")
    assert Cfg().needs_ref_logprobs and not Cfg(kl_coef=0.0).needs_ref_logprobs
    batch = toy_batch()
    batch.ref_logprobs = None
    with pytest.raises(ValueError, match="ref_logprobs"):
        fn(batch, Cfg(kl_coef=0.1))
    assert torch.isfinite(fn(batch, Cfg(kl_coef=0.0))).all()


def test_reinforce_pp_baseline_numpy():
    """(R_i - group mean) on every token, whitened over the 10 valid tokens (numpy, ddof=1)."""
    m = np.array(MASK, dtype=float)
    a = (np.array(R) - 0.5)[:, None] * m
    vals = a[m == 1]
    expected = (a - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8) * m
    np.testing.assert_allclose(adv("reinforce_pp_baseline", toy_batch()).numpy(), expected, rtol=1e-10, atol=1e-12)


def _gae_batch(mask, values, lp_old, d_ref, R_final=1.0) -> RolloutBatch:
    lp_old = torch.tensor([lp_old], dtype=torch.float64)
    return RolloutBatch(
        response_mask=torch.tensor([mask]),
        group_ids=torch.zeros(1, dtype=torch.long),
        rewards=torch.tensor([R_final], dtype=torch.float64),
        old_logprobs=lp_old,
        ref_logprobs=lp_old + torch.tensor([d_ref], dtype=torch.float64),
        values=torch.tensor([values], dtype=torch.float64),
    )


def test_gae_spec_values_and_returns():
    """Spec 2.6: gamma 1, lambda 0.95, beta 0.05, V = [.5, .6, .7, .8], R = 1.
    token rewards [-0, 0.01, -0.015, 1.005]; A = [0.456974 0.375762 0.27975 0.205];
    returns = A + V = [0.956974 0.975762 0.97975 1.005]."""
    batch = _gae_batch([1, 1, 1, 1], [0.5, 0.6, 0.7, 0.8], [-0.3, -0.9, -1.5, -0.4], [0.0, 0.2, -0.3, 0.1])
    A = adv("gae", batch, gamma=1.0, lam=0.95, kl_coef=0.05, whiten=False)
    np.testing.assert_allclose(A[0].numpy(), [0.456974, 0.375762, 0.27975, 0.205], rtol=1e-5)
    np.testing.assert_allclose(batch.returns[0].numpy(), [0.956974, 0.975762, 0.97975, 1.005], rtol=1e-5)
    whitened = adv("gae", batch, gamma=1.0, lam=0.95, kl_coef=0.05, whiten=True)
    raw = np.array([0.456974, 0.375762, 0.27975, 0.205])
    np.testing.assert_allclose(whitened[0].numpy(), (raw - raw.mean()) / raw.std(ddof=1), rtol=1e-4)
    np.testing.assert_allclose(batch.returns[0].numpy(), [0.956974, 0.975762, 0.97975, 1.005], rtol=1e-5)


def test_gae_and_returns_skip_mask_holes():
    """A response with a masked tool-output token in the middle equals the compacted response:
    [t0, tool, t1, t2] behaves as [t0, t1, t2], whatever the tool position holds."""
    full = _gae_batch([1, 0, 1, 1], [0.5, 99.0, 0.7, 0.8], [-0.3, -50.0, -1.5, -0.4], [0.0, 7.0, -0.3, 0.1])
    compact = _gae_batch([1, 1, 1], [0.5, 0.7, 0.8], [-0.3, -1.5, -0.4], [0.0, -0.3, 0.1])
    a_full = adv("gae", full, gamma=0.9, lam=0.8, kl_coef=0.05, whiten=False)
    a_comp = adv("gae", compact, gamma=0.9, lam=0.8, kl_coef=0.05, whiten=False)
    np.testing.assert_allclose(a_full[0, [0, 2, 3]].numpy(), a_comp[0].numpy(), rtol=1e-12)
    assert a_full[0, 1].item() == 0.0 and full.returns[0, 1].item() == 0.0
    rew = torch.tensor([[1.0, 5.0, 2.0, 3.0]], dtype=torch.float64)
    ret = discounted_returns(rew, torch.tensor([[1, 0, 1, 1]]), 0.5)
    # G_3 = 3, G_2 = 2 + 0.5 * 3 = 3.5, G_0 = 1 + 0.5 * 3.5 = 2.75
    assert ret[0].tolist() == [2.75, 0.0, 3.5, 3.0]


def test_gae_pure_function_matches_numpy_loop():
    """Independent numpy GAE (spec loop) on random right-padded rows."""
    rng = np.random.default_rng(0)
    N, T, gamma, lam = 3, 5, 0.97, 0.9
    lengths = [5, 3, 1]
    mask = np.array([[1.0] * n + [0.0] * (T - n) for n in lengths])
    rew, val = rng.normal(size=(N, T)) * mask, rng.normal(size=(N, T))
    exp_adv = np.zeros((N, T))
    for i, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            v_next = val[i, t + 1] if t < n - 1 else 0.0
            last = rew[i, t] + gamma * v_next - val[i, t] + gamma * lam * last
            exp_adv[i, t] = last
    a, ret = gae_advantages_returns(torch.tensor(rew), torch.tensor(val), torch.tensor(mask), gamma, lam)
    np.testing.assert_allclose(a.numpy(), exp_adv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), (exp_adv + val) * mask, rtol=1e-12, atol=1e-12)


def test_gae_needs_values():
    fn, Cfg = get("advantage", "gae")
    assert Cfg().needs_values and not Cfg().needs_ref_logprobs and Cfg(kl_coef=0.1).needs_ref_logprobs
    with pytest.raises(ValueError, match="values"):
        fn(toy_batch(), Cfg())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_external_snippet_grpo_advantage(dtype):
    """The advantage half of the external check: get("advantage", "grpo") with a default config."""
    batch = toy_batch(dtype)
    adv_fn, AdvCfg = get("advantage", "grpo")
    batch.advantages = adv_fn(batch, AdvCfg())
    assert batch.advantages.shape == (4, 4) and batch.advantages.dtype == dtype
