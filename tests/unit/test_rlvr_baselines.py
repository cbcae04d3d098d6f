"""RLVR baselines other libraries ship: GPG, OPO, MaxRL and pass@k advantages; GMPO and DPPO losses.

Expected values are derived by hand in each test's docstring (small groups, round numbers), or by
an independent computation written from the paper's definition (the pass@k advantage by
enumerating every k-subset of a group; the binary KL with numpy). Every loss has a float64
finite-difference gradient check (``torch.autograd.gradcheck``); the registry contract and the
micro-batch contract of every registered part run in ``test_contract.py`` / ``test_microbatch.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from anypo.algorithms import PRESETS
from anypo.registry import get, registry
from anypo.types import PolicyOutput, RolloutBatch


def outcome_batch(rewards, group_ids, lengths=None, **extras) -> RolloutBatch:
    """Sequences of the given lengths (default 2) with outcome rewards, float64."""
    n = len(rewards)
    lengths = lengths or [2] * n
    T = max(max(lengths), 1)
    mask = torch.tensor([[1] * m + [0] * (T - m) for m in lengths], dtype=torch.float64)
    return RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor(group_ids),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        extras=dict(extras),
    )


def adv(name: str, batch: RolloutBatch, **cfg) -> np.ndarray:
    """[N] the sequence advantage (first token) of the registered part ``name``."""
    fn, Cfg = get("advantage", name)
    A = fn(batch, Cfg(**cfg))
    assert torch.equal(A, A * batch.response_mask)  # 0 off the mask
    return A[:, 0].numpy()


# ------------------------------------------------------------------------------------------------
# GPG
# ------------------------------------------------------------------------------------------------


def test_gpg_hand_example():
    """Groups g0 = [1, 0, 0, 0] (mean 1/4), g1 = [1, 1, 1, 1] (all equal), g2 = [0, 1] (mean 1/2).
    B = 10 samples, M = 4 in the all-equal group, alpha = 10 / 6 = 5/3.
    A = alpha (R - mean): g0 [3/4, -1/4, -1/4, -1/4] * 5/3 = [5/4, -5/12, -5/12, -5/12]; g1 0;
    g2 [-1/2, 1/2] * 5/3 = [-5/6, 5/6]."""
    b = outcome_batch([1, 0, 0, 0, 1, 1, 1, 1, 0, 1], [0] * 4 + [1] * 4 + [2] * 2)
    expected = [5 / 4, -5 / 12, -5 / 12, -5 / 12, 0, 0, 0, 0, -5 / 6, 5 / 6]
    np.testing.assert_allclose(adv("gpg", b), expected, rtol=1e-12, atol=1e-15)


def test_gpg_std_normalize_and_cap():
    """g0 = [1, 0, 0, 0]: unbiased std = sqrt((9/16 + 3/16) / 3) = 1/2, so with std_normalize
    A = alpha (R - 1/4) / (1/2 + 1e-4); g1 = [1, 1] adds M = 2 of B = 6: alpha = 6/4 = 3/2.
    max_alpha = 1.2 caps it."""
    b = outcome_batch([1, 0, 0, 0, 1, 1], [0] * 4 + [1] * 2)
    centred = np.array([0.75, -0.25, -0.25, -0.25, 0, 0])
    np.testing.assert_allclose(adv("gpg", b, std_normalize=True), 1.5 * centred / (0.5 + 1e-4), rtol=1e-12)
    np.testing.assert_allclose(adv("gpg", b, max_alpha=1.2), 1.2 * centred, rtol=1e-12, atol=1e-15)


def test_gpg_without_signal_and_singletons():
    """Every group all-equal: alpha falls back to 1 and every advantage is 0 (no 0/0). A group of
    one sample has no baseline (A = 0) and counts in M: [1, 0] + singleton [1] gives alpha 3/2."""
    np.testing.assert_array_equal(adv("gpg", outcome_batch([1, 1, 0, 0], [0, 0, 1, 1])), 0.0)
    np.testing.assert_allclose(adv("gpg", outcome_batch([1, 0, 1], [0, 0, 5])), [0.75, -0.75, 0.0])


def test_gpg_config_errors():
    _, Cfg = get("advantage", "gpg")
    with pytest.raises(ValueError, match="eps"):
        Cfg(eps=0.0)
    with pytest.raises(ValueError, match="max_alpha"):
        Cfg(max_alpha=0.5)


# ------------------------------------------------------------------------------------------------
# OPO
# ------------------------------------------------------------------------------------------------


def test_opo_length_weighted_baseline():
    """Lengths [3, 2, 4, 1], rewards [1, 0, 1, 0]: b = (3*1 + 2*0 + 4*1 + 1*0) / (3+2+4+1) = 0.7,
    A = R - 0.7 = [0.3, -0.7, 0.3, -0.7] (the plain mean 0.5 would give +-0.5). A second group of
    equal lengths [2, 2] and rewards [1, 0] has b = 1/2: A = [1/2, -1/2] (OPO = Dr. GRPO there)."""
    b = outcome_batch([1, 0, 1, 0, 1, 0], [7, 7, 7, 7, 3, 3], lengths=[3, 2, 4, 1, 2, 2])
    np.testing.assert_allclose(adv("opo", b), [0.3, -0.7, 0.3, -0.7, 0.5, -0.5], rtol=1e-12)


def test_opo_singleton_and_empty_group():
    """A group of one sample gets 0; a group whose responses are all empty falls back to the plain
    mean (and its advantages are masked out anyway); a longer correct answer raises the baseline:
    lengths [1, 3], R [0, 1]: b = 3/4, A = [-3/4, 1/4]."""
    b = outcome_batch([1.0, 0, 1, 0, 1], [0, 1, 1, 2, 2], lengths=[2, 1, 3, 0, 0])
    A = adv("opo", b)
    np.testing.assert_allclose(A[:3], [0.0, -0.75, 0.25], rtol=1e-12)
    np.testing.assert_array_equal(A[3:], 0.0)  # masked
    fn, Cfg = get("advantage", "opo")
    assert torch.isfinite(fn(b, Cfg())).all()


# ------------------------------------------------------------------------------------------------
# MaxRL
# ------------------------------------------------------------------------------------------------


def test_maxrl_inverse_pass_rate_weighting():
    """A = (R - p) / p: g0 = [1, 0, 0, 0] (p = 1/4): correct (3/4)/(1/4) = 3, wrong -1;
    g1 = [1, 1, 0, 0] (p = 1/2): +-1; all-wrong and all-right groups: 0. The correct answer of the
    hard prompt weighs 3 times the easy one's, where GRPO's z-score gives 1.5 vs 0.87."""
    b = outcome_batch([1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1], [0] * 4 + [1] * 4 + [2] * 2 + [3] * 2)
    eps = 1e-6
    expected = [0.75 / (0.25 + eps)] + [-0.25 / (0.25 + eps)] * 3 + [0.5 / (0.5 + eps)] * 2 + [-0.5 / (0.5 + eps)] * 2
    np.testing.assert_allclose(adv("maxrl", b), expected + [0.0] * 4, rtol=1e-12)
    np.testing.assert_allclose(adv("maxrl", b, eps=0.0)[:8], [3, -1, -1, -1, 1, 1, -1, -1], rtol=1e-12)


def test_maxrl_sum_is_gradient_over_successes():
    """With binary rewards, sum_i A_i grad_i = (G/K) sum_{i correct} grad_i - sum_i grad_i: the
    weight of each correct sample is 1/p - 1 = G/K - 1 and of each wrong one -1 (eps = 0), i.e.
    the mean score over the K successes scaled by G, minus the group's mean-score control variate."""
    R = [1, 0, 1, 0, 0, 0]  # G = 6, K = 2, p = 1/3
    A = adv("maxrl", outcome_batch(R, [0] * 6), eps=0.0)
    np.testing.assert_allclose(A, [2, -1, 2, -1, -1, -1], rtol=1e-12)
    assert abs(A.sum()) < 1e-12


def test_maxrl_non_positive_mean_and_singleton():
    """A group with mean reward <= 0 ([-1, 0]: mean -1/2) carries no signal (0, not a sign flip);
    a group of one sample gets 0 (the official code divides its reward by eps)."""
    A = adv("maxrl", outcome_batch([-1.0, 0.0, 1.0], [0, 0, 1]))
    np.testing.assert_array_equal(A, 0.0)
    with pytest.raises(ValueError, match="eps"):
        get("advantage", "maxrl")[1](eps=-1.0)


# ------------------------------------------------------------------------------------------------
# pass@k
# ------------------------------------------------------------------------------------------------


def brute_force_passk(correct: list[bool], k: int) -> list[float]:
    """Independent computation from the definition: every k-subset S of the group gets the reward
    max_{i in S} R_i; R_bar and sigma are the mean and (population) std of those subset rewards;
    a response's advantage is the mean of (reward(S) - R_bar) / sigma over the subsets holding it."""
    n = len(correct)
    subsets = list(itertools.combinations(range(n), k))
    reward = {S: float(any(correct[i] for i in S)) for S in subsets}
    r_bar = sum(reward.values()) / len(subsets)
    sigma = math.sqrt(sum((r - r_bar) ** 2 for r in reward.values()) / len(subsets))
    out = []
    for i in range(n):
        mine = [S for S in subsets if i in S]
        out.append(sum((reward[S] - r_bar) for S in mine) / len(mine) / (sigma + 1e-6))
    return out


def test_passk_hand_example():
    """n = 4, c = 1, k = 2: R_bar = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2, sigma = 1/2;
    A_pos = (1/2)/(1/2) = 1; a wrong response is in C(3,1) = 3 pairs, C(2,1) = 2 of them with no
    correct one: A_neg = (1 - 1/2 - 2/3) / (1/2) = -1/3 (pass@1 training would give -1/sqrt(3))."""
    A = adv("passk", outcome_batch([1, 0, 0, 0], [0] * 4), k=2, eps=1e-12)
    np.testing.assert_allclose(A, [1.0, -1 / 3, -1 / 3, -1 / 3], rtol=1e-9)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 2), (6, 2, 3), (8, 3, 4), (8, 1, 2), (5, 4, 2), (7, 2, 5)])
def test_passk_matches_subset_enumeration(n, c, k):
    """The closed form equals the average over every k-subset (independent enumeration)."""
    correct = [True] * c + [False] * (n - c)
    A = adv("passk", outcome_batch([float(x) for x in correct], [0] * n), k=k)
    np.testing.assert_allclose(A, brute_force_passk(correct, k), rtol=1e-9, atol=1e-12)


def test_passk_limits():
    """k = 1 is GRPO with the population std: p = 1/4, A_pos = (3/4)/sqrt(3/16) = sqrt(3),
    A_neg = -(1/4)/sqrt(3/16) = -1/sqrt(3). k = n has a single subset: every advantage is 0.
    n - c < k (every pair holds a correct answer): wrong answers are not penalised at all
    (A_neg = 0) and R_bar = 1 gives A_pos = 0 too. All wrong: 0."""
    b = outcome_batch([1, 0, 0, 0], [0] * 4)
    np.testing.assert_allclose(adv("passk", b, k=1, eps=1e-12), [3**0.5] + [-(3**-0.5)] * 3, rtol=1e-9)
    np.testing.assert_allclose(adv("passk", b, k=4), 0.0, atol=1e-12)
    np.testing.assert_allclose(adv("passk", outcome_batch([1, 1, 1, 0], [0] * 4), k=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(adv("passk", outcome_batch([0, 0, 0], [0] * 3), k=2), 0.0, atol=1e-12)


def test_passk_correctness_and_errors():
    """Correctness comes from extras["correct"] when present (reward 1.1 with a format bonus but
    wrong is negative); a group smaller than k (a sample dropped after a reward error) has no
    k-subset: its advantages are 0 and it is counted, while the other groups keep theirs (group 1
    below is the hand example of test_passk_hand_example); k < 1 is refused."""
    b = outcome_batch([1.1, 0.1, 0.1, 0.1], [0] * 4, correct=[0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(adv("passk", b, k=2, eps=1e-12), [-1 / 3, 1.0, -1 / 3, -1 / 3], rtol=1e-9)
    b = outcome_batch([1, 0, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1])
    cfg = get("advantage", "passk")[1](k=3, eps=1e-12)
    A = get("advantage", "passk")[0](b, cfg)
    # group 1 (n = 4, c = 1, k = 3): R_bar = 1 - C(3,3)/C(4,3) = 3/4, sigma = sqrt(3)/4,
    # A_pos = (1/4)/sigma = 1/sqrt(3); a wrong response's 2 partners (of 3) are all wrong in C(2,2)/C(3,2)
    # = 1/3 of its subsets: A_neg = (1 - 3/4 - 1/3)/sigma = -(1/12)(4/sqrt(3)) = -1/(3 sqrt(3))
    s3 = 3**0.5
    np.testing.assert_allclose(A[:, 0], [0, 0, 1 / s3, -1 / (3 * s3), -1 / (3 * s3), -1 / (3 * s3)], atol=1e-9)
    assert b.part_metrics == {"passk_short_groups": 1.0}
    assert cfg.min_group_size == 3
    with pytest.raises(ValueError, match="k must be"):
        get("advantage", "passk")[1](k=0)


# ------------------------------------------------------------------------------------------------
# GMPO
# ------------------------------------------------------------------------------------------------


def gmpo_toy() -> tuple[RolloutBatch, torch.Tensor]:
    """Sequence 0: A = +1, 3 tokens, d = lp - old = [0.1, 0.6, -0.5]; sequence 1: A = -1, 2 tokens,
    d = [-0.6, 0.2] (padding holds garbage that must not matter)."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, float("nan")]], dtype=torch.float64)
    d = torch.tensor([[0.1, 0.6, -0.5], [-0.6, 0.2, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([0, 0]),
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        old_logprobs=old,
        advantages=torch.tensor([[1.0, 1, 1], [-1, -1, 0]], dtype=torch.float64),
    )
    lp = torch.where(mask > 0, old + d, torch.full_like(d, float("-inf")))
    return batch, lp.requires_grad_(True)


def test_gmpo_hand_example():
    """eps = 0.4 (log space). Sequence 0 (A > 0) clips only upward: d~ = [0.1, 0.4, -0.5], mean 0,
    rho_0 = 1, L_0 = -1; its gradient -A rho / |o| = -1/3 on the two unclipped tokens, 0 on the
    clipped one. Sequence 1 (A < 0) clips only downward: d~ = [-0.4, 0.2], mean -0.1,
    rho_1 = e^-0.1, L_1 = +e^-0.1, gradient +rho_1 / 2 on token 2 only.
    seq_mean_token_mean: loss = (L_0 + L_1) / 2, gradient halved. clipfrac 2/5."""
    batch, lp = gmpo_toy()
    fn, Cfg = get("policy_loss", "gmpo")
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg())
    (g,) = torch.autograd.grad(out.loss, lp)
    r1 = math.exp(-0.1)
    assert out.loss.item() == pytest.approx((-1 + r1) / 2, rel=1e-12)
    np.testing.assert_allclose(g.numpy(), [[-1 / 6, 0, -1 / 6], [0, r1 / 4, 0]], rtol=1e-12, atol=1e-15)
    assert out.metrics["policy/clipfrac"] == pytest.approx(2 / 5)
    assert out.metrics["policy/seq_ratio_max"] == pytest.approx(1.0)
    assert out.metrics["policy/seq_ratio_min"] == pytest.approx(r1)
    assert out.metrics["policy/ratio_max"] == pytest.approx(math.exp(0.6))


def test_gmpo_geometric_mean_tames_an_outlier():
    """One token with log-ratio 3 among nine at 0, A = +1, no clipping (eps = 10): the arithmetic
    mean of the token ratios (GRPO) is (9 + e^3)/10 = 2.909; GMPO's geometric mean is
    e^(3/10) = 1.350, and its gradient weight is the same 1.350/10 on every token."""
    T = 10
    old = torch.full((1, T), -1.0, dtype=torch.float64)
    d = torch.zeros(1, T, dtype=torch.float64)
    d[0, 4] = 3.0
    batch = RolloutBatch(
        response_mask=torch.ones(1, T, dtype=torch.float64),
        group_ids=torch.tensor([0]),
        rewards=torch.tensor([1.0], dtype=torch.float64),
        old_logprobs=old,
        advantages=torch.ones(1, T, dtype=torch.float64),
    )
    lp = (old + d).requires_grad_(True)
    fn, Cfg = get("policy_loss", "gmpo")
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg(eps_low=10.0, eps_high=10.0))
    (g,) = torch.autograd.grad(out.loss, lp)
    assert out.metrics["policy/seq_ratio_mean"] == pytest.approx(math.exp(0.3))
    np.testing.assert_allclose(g.numpy(), -math.exp(0.3) / T, rtol=1e-12)
    assert out.metrics["policy/ratio_mean"] == pytest.approx((9 + math.exp(3)) / 10)


def test_gmpo_config_errors():
    _, Cfg = get("policy_loss", "gmpo")
    with pytest.raises(ValueError, match="eps_low"):
        Cfg(eps_low=0.0)
    with pytest.raises(ValueError, match="aggregation"):
        Cfg(aggregation="sum")


# ------------------------------------------------------------------------------------------------
# DPPO
# ------------------------------------------------------------------------------------------------

# token: (A, mu, p): the trust region is on p - mu, in the direction of A
DPPO_TOKENS = [
    (+1, 0.10, 0.35),  # p rose by 0.25 > 0.15: masked
    (-1, 0.40, 0.10),  # p fell by 0.30 > 0.15: masked
    (+1, 0.50, 0.60),  # +0.10: kept, r = 1.2
    (-1, 0.70, 0.90),  # rose although A < 0 (not the direction of A): kept, r = 9/7
    (+1, 1e-5, 1e-3),  # r = 100 (PPO clips it) but p moved by 0.00099: kept, weight min(100, 20)
    (-1, 0.99, 0.80),  # r = 0.808 (inside PPO's [0.8, 1.2]) but p fell by 0.19: masked
]


def dppo_toy(anchor_field: str = "old_logprobs") -> tuple[RolloutBatch, torch.Tensor]:
    A = torch.tensor([[a for a, _, _ in DPPO_TOKENS]], dtype=torch.float64)
    mu = torch.tensor([[m for _, m, _ in DPPO_TOKENS]], dtype=torch.float64).log()
    p = torch.tensor([[q for _, _, q in DPPO_TOKENS]], dtype=torch.float64).log()
    batch = RolloutBatch(
        response_mask=torch.ones(1, 6, dtype=torch.float64),
        group_ids=torch.tensor([0]),
        rewards=torch.tensor([1.0], dtype=torch.float64),
        old_logprobs=mu.clone(),
        advantages=A,
    )
    if anchor_field == "rollout_logprobs":  # the engine's log-probs differ from the learner's
        batch.rollout_logprobs, batch.old_logprobs = mu.clone(), mu + 0.5
    return batch, p.requires_grad_(True)


def test_dppo_binary_tv_hand_example():
    """delta 0.15 (TV), token_mean over 6 tokens, dL/dlp = -A min(r, 20) valid / 6:
    masked tokens 1, 2, 6 -> 0; token 3: -1.2/6; token 4: +(9/7)/6; token 5: -20/6.
    masked_frac 3/6, with a positive advantage 1/6, a negative one 2/6."""
    batch, lp = dppo_toy()
    fn, Cfg = get("policy_loss", "dppo")
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg())
    (g,) = torch.autograd.grad(out.loss, lp)
    np.testing.assert_allclose(g.numpy(), [[0, 0, -1.2 / 6, (9 / 7) / 6, -20 / 6, 0]], rtol=1e-9, atol=1e-15)
    m = out.metrics
    assert (m["dppo/masked_frac"], m["dppo/masked_pos_frac"], m["dppo/masked_neg_frac"]) == pytest.approx(
        (3 / 6, 1 / 6, 2 / 6)
    )
    assert m["policy/clipfrac"] == m["dppo/masked_frac"]
    assert m["dppo/capped_frac"] == pytest.approx(1 / 6)
    shifts = [0.25, 0.30, 0.10, 0.20, 1e-3 - 1e-5, 0.19]
    assert m["dppo/prob_shift_mean"] == pytest.approx(sum(shifts) / 6)
    # without the cap, token 5 carries its full ratio 100
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg(ratio_cap=None))
    (g,) = torch.autograd.grad(out.loss, lp)
    assert g[0, 4].item() == pytest.approx(-100 / 6, rel=1e-9)


def test_dppo_binary_kl_matches_numpy():
    """Binary KL D = mu log(mu/p) + (1 - mu) log((1 - mu)/(1 - p)) (numpy, independent), delta 0.05:
    a token is masked when D > 0.05 and p moved in the direction of A. Token 3 (0.5 -> 0.6):
    D = 0.5 ln(5/6) + 0.5 ln(5/4) = 0.0204 < 0.05: kept; token 1 (0.1 -> 0.35, A > 0): D = 0.1676: masked."""
    batch, lp = dppo_toy()
    fn, Cfg = get("policy_loss", "dppo")
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg(divergence="kl"))
    (g,) = torch.autograd.grad(out.loss, lp)
    A = np.array([a for a, _, _ in DPPO_TOKENS], dtype=np.float64)
    mu = np.array([m for _, m, _ in DPPO_TOKENS])
    p = np.array([q for _, _, q in DPPO_TOKENS])
    D = mu * np.log(mu / p) + (1 - mu) * np.log((1 - mu + 1e-8) / (1 - p + 1e-8))
    assert D[2] == pytest.approx(0.5 * math.log(5 / 6) + 0.5 * math.log(5 / 4), rel=1e-6)
    assert D[0] == pytest.approx(0.1676, abs=1e-4)
    moved_with_A = np.where(A > 0, p > mu, p < mu)
    valid = ~((D > 0.05) & moved_with_A)
    expected = -A * np.minimum(p / mu, 20.0) * valid / 6
    np.testing.assert_allclose(g.numpy()[0], expected, rtol=1e-9, atol=1e-15)
    assert list(valid) == [False, False, True, True, True, False]


def test_dppo_anchor():
    """anchor="rollout" measures against rollout_logprobs when the learner recomputed old_logprobs
    (the hand example again); anchor="old" against old_logprobs = mu + 0.5 (every ratio e^-0.5 times
    smaller and every mu e^0.5 times larger, so other tokens are masked)."""
    batch, lp = dppo_toy("rollout_logprobs")
    fn, Cfg = get("policy_loss", "dppo")
    (g,) = torch.autograd.grad(fn(PolicyOutput(logprobs=lp), batch, Cfg()).loss, lp)
    np.testing.assert_allclose(g.numpy(), [[0, 0, -1.2 / 6, (9 / 7) / 6, -20 / 6, 0]], rtol=1e-9, atol=1e-15)
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg(anchor="old"))
    (g_old,) = torch.autograd.grad(out.loss, lp)
    assert not torch.allclose(g_old, g)


def test_dppo_declares_no_rollout_logprobs_need():
    """DPPO never compares the engine's log-probs with the learner's, so neither anchor declares
    needs_rollout_logprobs (which would make the loop recompute old_logprobs on every batch). With
    anchor="rollout" the loss is the same whether the loop recomputed (old = the learner's mu + 0.5,
    rollout_logprobs = the engine's mu) or not (old_logprobs = the engine's mu, no rollout_logprobs):
    both give the hand example's gradient -A min(r, 20) valid / 6 of test_dppo_binary_tv_hand_example."""
    _, Cfg = get("policy_loss", "dppo")
    for anchor in ("rollout", "old"):
        assert Cfg(anchor=anchor).needs_rollout_logprobs is False
    assert not PRESETS["dppo"].build().needs("rollout_logprobs")
    fn = get("policy_loss", "dppo")[0]
    expected = [[0, 0, -1.2 / 6, (9 / 7) / 6, -20 / 6, 0]]
    losses = []
    for field in ("old_logprobs", "rollout_logprobs"):  # not recomputed / recomputed by the learner
        batch, lp = dppo_toy(field)
        assert (batch.rollout_logprobs is None) == (field == "old_logprobs")
        out = fn(PolicyOutput(logprobs=lp), batch, Cfg())
        (g,) = torch.autograd.grad(out.loss, lp)
        np.testing.assert_allclose(g.numpy(), expected, rtol=1e-9, atol=1e-15)
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)


def test_dppo_config():
    _, Cfg = get("policy_loss", "dppo")
    assert Cfg().bounds == (0.15, 0.15) and Cfg(divergence="kl").bounds == (0.05, 0.05)
    assert Cfg(delta_low=0.3).bounds == (0.3, 0.15)
    for bad in ({"divergence": "js"}, {"delta_high": 0.0}, {"ratio_cap": -1.0}, {"anchor": "ref"}):
        with pytest.raises(ValueError, match="DPPO"):
            Cfg(**bad)


# ------------------------------------------------------------------------------------------------
# float64 finite-difference gradients
# ------------------------------------------------------------------------------------------------


def random_batch(seed: int, spread: float) -> tuple[RolloutBatch, torch.Tensor]:
    """8 sequences in 2 groups of 4 with varied lengths and a hole, binary rewards, GRPO-like
    advantages plus token noise, current log-probs within ``spread`` of the old ones."""
    g = torch.Generator().manual_seed(seed)
    N, T = 8, 6
    lengths = [6, 4, 1, 3, 5, 2, 6, 4]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths], dtype=torch.float64)
    mask[6, 2] = 0
    old = -torch.rand(N, T, generator=g, dtype=torch.float64) * 2 - 0.05
    R = torch.tensor([1.0, 0, 1, 0, 0, 0, 1, 1], dtype=torch.float64)
    A = (R - 0.5).unsqueeze(-1) * 2 + torch.randn(N, T, generator=g, dtype=torch.float64) * 0.3
    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([3, 3, 3, 3, 9, 9, 9, 9]),
        rewards=R,
        old_logprobs=old,
        rollout_logprobs=old + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * 0.1,
        advantages=A * mask,
    )
    lp = (old + (torch.rand(N, T, generator=g, dtype=torch.float64) * 2 - 1) * spread).clamp(max=-1e-3)
    return batch, lp.requires_grad_(True)


@pytest.mark.parametrize("spread", [0.05, 0.3])
@pytest.mark.parametrize(
    ("name", "cfg"),
    [
        ("gmpo", {}),
        ("gmpo", {"eps_low": 0.1, "eps_high": 0.1, "aggregation": "token_mean"}),
        ("dppo", {}),
        ("dppo", {"divergence": "kl", "delta_low": 0.02, "delta_high": 0.02}),
        ("dppo", {"anchor": "old", "ratio_cap": 1.05, "aggregation": "seq_mean_token_sum_norm"}),
    ],
)
def test_gradcheck(name, cfg, spread):
    """torch.autograd.gradcheck in float64. DPPO's weight min(r, C) is a stop-gradient constant:
    the finite differences move the anchor log-probs with lp so that r (and C's effect) stays fixed;
    the trust-region mask can only flip at a threshold, which the random points avoid."""
    batch, lp = random_batch(int(spread * 100), spread)
    fn, Cfg = get("policy_loss", name)
    config = Cfg(**cfg)
    lp0 = lp.detach().clone()
    old0, roll0 = batch.old_logprobs.clone(), batch.rollout_logprobs.clone()

    def loss(x: torch.Tensor) -> torch.Tensor:
        if name == "dppo":
            batch.old_logprobs, batch.rollout_logprobs = old0 + (x - lp0), roll0 + (x - lp0)
        return fn(PolicyOutput(logprobs=x), batch, config).loss

    assert torch.autograd.gradcheck(loss, (lp,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("preset", ["gpg", "opo", "maxrl", "passk"])
def test_preset_loss_on_the_new_advantages_gradcheck(preset):
    """The presets' advantage followed by their policy loss: finite advantages and a float64
    gradcheck of the loss on them (the advantages are constants of the update). pass@4 needs
    groups larger than k = 4 (at k = G every advantage is 0): one group of 8 there."""
    algo = PRESETS[preset].build()
    batch, lp = random_batch(3, 0.2)
    batch.advantages = None
    if preset == "passk":
        batch.group_ids = torch.zeros(8, dtype=torch.long)
    adv_fn = registry("advantage").fn_for(algo.advantage)
    batch.advantages = adv_fn(batch, algo.advantage)
    assert torch.isfinite(batch.advantages).all() and batch.advantages.abs().sum() > 0
    loss_fn = registry("policy_loss").fn_for(algo.policy_loss)
    assert torch.autograd.gradcheck(
        lambda x: loss_fn(PolicyOutput(logprobs=x), batch, algo.policy_loss).loss, (lp,), eps=1e-6, atol=1e-7
    )


# ------------------------------------------------------------------------------------------------
# Presets: the papers' settings
# ------------------------------------------------------------------------------------------------


def names(algo) -> tuple[str, str]:
    return registry("advantage").name_of(algo.advantage), registry("policy_loss").name_of(algo.policy_loss)


def test_gpg_preset():
    """GPG (official open-r1 run): F_norm = 1, alpha = B/(B-M), REINFORCE -A lp, token mean, no KL."""
    a = PRESETS["gpg"].build()
    assert names(a) == ("gpg", "reinforce")
    assert not a.advantage.std_normalize and a.advantage.max_alpha is None
    assert a.policy_loss.aggregation == "token_mean" and a.regularizers == ()
    assert (a.ppo_epochs, a.minibatch_prompts) == (1, None)


def test_opo_preset():
    """OPO: exact on-policy (mini-batch = rollout batch, one epoch), no KL, no entropy bonus."""
    a = PRESETS["opo"].build()
    assert names(a) == ("opo", "ppo_clip") and a.regularizers == ()
    assert (a.ppo_epochs, a.minibatch_prompts) == (1, None)


def test_maxrl_preset():
    """MaxRL (official Qwen3 runs): PPO clip 0.2/0.2 with dual clip 3, token mean, one on-policy
    update (mini-batch 256 = batch 256), no KL."""
    a = PRESETS["maxrl"].build()
    assert names(a) == ("maxrl", "ppo_clip") and a.regularizers == ()
    p = a.policy_loss
    assert (p.eps_low, p.eps_high, p.dual_clip, p.aggregation) == (0.2, 0.2, 3.0, "token_mean")
    assert (a.ppo_epochs, a.minibatch_prompts) == (1, None)


def test_passk_preset():
    a = PRESETS["passk"].build()
    assert names(a) == ("passk", "ppo_clip") and a.advantage.k == 4


def test_gmpo_preset():
    """GMPO (official): log-space clip 0.4, GRPO advantages, no KL, sequence mean."""
    a = PRESETS["gmpo"].build()
    assert names(a) == ("grpo", "gmpo") and a.regularizers == ()
    assert (a.policy_loss.eps_low, a.policy_loss.eps_high) == (0.4, 0.4)
    assert a.policy_loss.aggregation == "seq_mean_token_mean"


def test_dppo_preset():
    """DPPO (the authors' verl example): Binary-TV 0.15, anchored to the rollout policy, no ratio
    cap, Dr. GRPO advantages, seq-mean-token-sum-norm, 8 mini-batches of 32 of 256 prompts, no KL."""
    a = PRESETS["dppo"].build()
    assert names(a) == ("dr_grpo", "dppo") and a.regularizers == ()
    p = a.policy_loss
    assert (p.divergence, p.bounds, p.anchor, p.ratio_cap) == ("tv", (0.15, 0.15), "rollout", None)
    assert p.aggregation == "seq_mean_token_sum_norm" and a.minibatch_prompts == 32
