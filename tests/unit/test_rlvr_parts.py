"""BNPO, RiskPO, DRPO and the REC / OPMD / AsymRE family.

Expected values come from the project spec ``shared/papers/rlvr-losses.md`` (sections 1, 8, 11, 13,
14), whose printed outputs are an independent numpy computation of the official code's formulas,
or are derived by hand in the test docstrings; a few tests compare with naive numpy
re-implementations written from the spec's formulas. Gradients are checked with float64 finite
differences (``torch.autograd.gradcheck``), and every loss with the micro-batch contract.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anypo.advantages.bnpo import bnpo_weights
from anypo.advantages.riskpo import RiskPOAdvantage
from anypo.losses.rec import REC, rec_in_range
from anypo.registry import get
from anypo.types import LossScale, PolicyOutput, RolloutBatch

# Shared toy batch of the spec (section 1): one prompt, G = 4, padded length 4.
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=np.float64)
LP_OLD = np.array([[-1.0, -0.5, -2.0, 0], [-0.7, -1.2, 0, 0], [-0.3, -0.9, -1.5, -0.4], [-2.2, 0, 0, 0]])
LP = LP_OLD + np.array([[0.1, -0.05, 0.3, 0], [-0.25, 0.02, 0, 0], [0.05, 0.4, -0.1, 0.0], [-0.5, 0, 0, 0]])
LENGTHS = MASK.sum(1)  # [3, 2, 4, 1]


def toy(rewards, adv_seq=None, group_ids=None) -> tuple[RolloutBatch, torch.Tensor]:
    """The spec's toy batch with the given rewards (and sequence advantages broadcast over the mask)."""
    batch = RolloutBatch(
        response_mask=torch.tensor(MASK),
        group_ids=torch.zeros(4, dtype=torch.long) if group_ids is None else torch.tensor(group_ids),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        old_logprobs=torch.tensor(LP_OLD),
    )
    if adv_seq is not None:
        batch.advantages = torch.tensor(np.asarray(adv_seq)[:, None] * MASK)
    return batch, torch.tensor(LP, requires_grad=True)


def outcome_batch(rewards, group_ids, **extras) -> RolloutBatch:
    n = len(rewards)
    return RolloutBatch(
        response_mask=torch.ones(n, 2),
        group_ids=torch.tensor(group_ids),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        extras=dict(extras),
    )


def adv(name: str, batch: RolloutBatch, **cfg) -> np.ndarray:
    fn, Cfg = get("advantage", name)
    return fn(batch, Cfg(**cfg)).numpy()


def loss_and_grad(name: str, batch: RolloutBatch, lp: torch.Tensor, **cfg):
    fn, Cfg = get("policy_loss", name)
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg(**cfg))
    (grad,) = torch.autograd.grad(out.loss, lp)
    return out, grad.numpy()


# ------------------------------------------------------------------------------------------------
# BNPO
# ------------------------------------------------------------------------------------------------


def test_bnpo_spec_example():
    """Spec 8: groups [1,0,0,0], [1,1,0,0], [1,1,1,0]: p = [.25, .5, .75], mu = .5, var = .0625,
    a = b = 1.5, alpha = beta = 1.5; Beta(1.5, 1.5).pdf = [1.10266, 1.27324, 1.10266] (scipy
    cross-check in the spec); A = (R - p) / f(p)."""
    R = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]
    A = adv("bnpo", outcome_batch(R, [0] * 4 + [1] * 4 + [2] * 4))
    expected = [0.680175, -0.226725, -0.226725, -0.226725] + [0.392699, 0.392699, -0.392699, -0.392699]
    expected += [0.226725, 0.226725, 0.226725, -0.680175]
    np.testing.assert_allclose(A[:, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(A[:, 1], expected, rtol=1e-5)  # broadcast over the mask


def test_bnpo_asymmetric_beta_by_hand():
    """p = [.25, .25, .75] (groups [1,0,0,0], [0,0,1,0], [1,1,0,1]): mu = 5/12, unbiased var =
    ((1/6)^2 + (1/6)^2 + (1/3)^2) / 2 = 1/12, k = mu (1 - mu) / var - 1 = 35/12 - 1 = 23/12,
    a = k mu = 115/144, b = k (1 - mu) = 161/144, alpha = 1 + a/3, beta = 1 + b/3; the density is
    written out with math.gamma."""
    R = [1, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 1]
    A = adv("bnpo", outcome_batch(R, [5] * 4 + [9] * 4 + [1] * 4))[:, 0]
    alpha, beta = 1 + 115 / 144 / 3, 1 + 161 / 144 / 3
    B = math.gamma(alpha) * math.gamma(beta) / math.gamma(alpha + beta)
    f = lambda x: x ** (alpha - 1) * (1 - x) ** (beta - 1) / B
    p = np.repeat([0.25, 0.25, 0.75], 4)
    np.testing.assert_allclose(A, (np.array(R) - p) / np.array([f(x) for x in p]), rtol=1e-10)


def test_bnpo_weights_clamp_and_edges():
    """1/f is clamped to 1e6 where the density is 0 (alpha > 1 at p = 0); alpha = beta = 1 is the
    uniform density (weight 1, also at p = 0 and 1, where 0 * log 0 = 0)."""
    one = torch.ones((), dtype=torch.float64)
    w = bnpo_weights(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), one * 2, one * 2)
    # Beta(2, 2).pdf(0.5) = 6 * 0.25 = 1.5
    np.testing.assert_allclose(w.numpy(), [1e6, 1 / 1.5, 1e6])
    np.testing.assert_allclose(bnpo_weights(torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64), one, one), 1.0)


def test_bnpo_fallbacks():
    """(a) every prompt with p = 0.5: var = 0 -> alpha = beta = 1, A = R - p; (b) one prompt: the
    code's mu = 0, var = 1 -> k = -1 -> alpha = beta = 1, A = R - p; (c) a single-sample group gets
    0 and stays out of the fit (the other two groups alone give (a))."""
    R = [1, 0, 0, 1, 1, 0]
    np.testing.assert_allclose(adv("bnpo", outcome_batch(R[:4], [0, 0, 1, 1]))[:, 0], [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_allclose(adv("bnpo", outcome_batch([1, 1, 0], [3, 3, 3]))[:, 0], [1 / 3, 1 / 3, -2 / 3])
    A = adv("bnpo", outcome_batch([1, 0, 0, 1, 1], [0, 0, 1, 1, 7]))[:, 0]
    np.testing.assert_allclose(A, [0.5, -0.5, -0.5, 0.5, 0.0])


def test_bnpo_reward_bounds():
    """Rewards in {-1, 1} with bounds [-1, 1] map to {0, 1}: the spec example again. Out of range raises."""
    R = np.array([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]) * 2.0 - 1.0
    ids = [0] * 4 + [1] * 4 + [2] * 4
    A = adv("bnpo", outcome_batch(list(R), ids), reward_min=-1.0)[:, 0]
    np.testing.assert_allclose(A[:4], [0.680175, -0.226725, -0.226725, -0.226725], rtol=1e-5)
    with pytest.raises(ValueError, match="reward-min"):
        adv("bnpo", outcome_batch(list(R), ids))


def test_bnpo_fits_correctness_not_the_total_reward():
    """Built-in tasks' rewards are correctness + 0.1 format (here 1.1, 0.1, 1.1, 0.1): with the
    default signal="correct" the advantage is that of the 0/1 correctness [1, 0, 1, 0] (one prompt
    only, so alpha = beta = 1, weight 1/Beta(1,1).pdf = 1, A = c - 0.5); signal="reward" refuses 1.1."""
    batch = outcome_batch([1.1, 0.1, 1.1, 0.1], [0, 0, 0, 0], correct=[1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(adv("bnpo", batch)[:, 0], [0.5, -0.5, 0.5, -0.5])
    with pytest.raises(ValueError, match="reward-max"):
        adv("bnpo", batch, signal="reward")


def test_bnpo_advantage_decomposition():
    """Components 'acc' (the spec example) and 'fmt' (always 1: p = 1 for every prompt, var = 0,
    uniform density, A = 1 - 1 = 0): the average is half the spec's advantage."""
    acc = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]
    comps = [{"acc": float(a), "fmt": 1.0} for a in acc]
    batch = outcome_batch([a + 1.0 for a in acc], [0] * 4 + [1] * 4 + [2] * 4, components=comps)
    A = adv("bnpo", batch, components=("acc", "fmt"))[:, 0]
    np.testing.assert_allclose(A[:4], np.array([0.680175, -0.226725, -0.226725, -0.226725]) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="components"):
        adv("bnpo", batch, components=("missing",))


def naive_bnpo(R: list[float], ids: list[int]) -> list[float]:
    """The official loop (dicts of groups), with this part's singleton rule, in plain Python."""
    groups: dict[int, list[float]] = {}
    for r, i in zip(R, ids, strict=True):
        groups.setdefault(i, []).append(r)
    p = {i: sum(g) / len(g) for i, g in groups.items() if len(g) > 1}
    ps = list(p.values())
    mu = sum(ps) / len(ps)
    var = sum((x - mu) ** 2 for x in ps) / (len(ps) - 1)
    k = mu * (1 - mu) / var - 1
    alpha, beta = max(1 + k * mu / 3, 1.0), max(1 + k * (1 - mu) / 3, 1.0)
    B = math.gamma(alpha) * math.gamma(beta) / math.gamma(alpha + beta)
    out = []
    for r, i in zip(R, ids, strict=True):
        if i not in p:
            out.append(0.0)
            continue
        pdf = p[i] ** (alpha - 1) * (1 - p[i]) ** (beta - 1) / B if 0 < p[i] < 1 else 0.0
        out.append(min(1 / pdf, 1e6) * (r - p[i]) if pdf > 0 else 1e6 * (r - p[i]))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_bnpo_naive_equivalence(seed):
    """Vectorised versus the naive loop on random binary rewards of 6 groups (sizes 1-5, shuffled ids)."""
    rng = np.random.default_rng(seed)
    ids = [int(i) for g, size in zip([11, 3, 8, 0, 5, 2], [4, 1, 5, 3, 4, 2], strict=True) for i in [g] * size]
    rng.shuffle(ids)
    R = [float(x) for x in rng.integers(0, 2, len(ids))]
    R[:2] = [0.0, 1.0]  # not every group equal
    expected = naive_bnpo(R, ids)
    if not np.isfinite(expected).all():
        pytest.skip("degenerate draw")
    np.testing.assert_allclose(adv("bnpo", outcome_batch(R, ids))[:, 0], expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# RiskPO
# ------------------------------------------------------------------------------------------------

RISK_R = [1, 0, 1, 0, 1, 1, 0, 0]  # spec 13: q1 = [1,0,1,0], q2 = [1,1,0,0]
RISK_IDS = [0, 0, 0, 0, 1, 1, 1, 1]


def test_riskpo_spec_example():
    """Spec 13: X = [2,1,1,0], q_dn = 0.6, q_up = 1.7, paper advantages [0, -.489897, -.489897,
    -2.97436]; credit 'std' divides by each question's std (both 0.57735): [0, -.848524, -.848524,
    -5.15174]; 'uniform' gives the paper advantages."""
    batch = outcome_batch(RISK_R, RISK_IDS)
    paper = [0, -0.489897, -0.489897, -2.97436]
    np.testing.assert_allclose(
        adv("riskpo", batch, bundle_size=2)[:, 0], [0, -0.848524, -0.848524, -5.15174] * 2, rtol=1e-5
    )
    np.testing.assert_allclose(adv("riskpo", batch, bundle_size=2, credit="uniform")[:, 0], paper * 2, rtol=1e-5)


def test_riskpo_scores_correctness_not_the_format_bonus():
    """The spec-13 example with a 0.1 format term added to every reward (R + 0.1): with the default
    signal="correct" and extras['correct'] = the 0/1 outcomes, the advantages are the spec's
    [0, -.848524, -.848524, -5.15174]; with signal="reward" the papers' scores shift by 0.2 (both
    questions) and the quantiles with them, and the result differs only where the std credit sees it."""
    R = [r + 0.1 for r in RISK_R]
    batch = outcome_batch(R, RISK_IDS, correct=list(RISK_R))
    np.testing.assert_allclose(
        adv("riskpo", batch, bundle_size=2)[:, 0], [0, -0.848524, -0.848524, -5.15174] * 2, rtol=1e-5
    )
    # a shift of every reward by 0.1 changes neither quantile gaps nor stds: the same advantages
    np.testing.assert_allclose(
        adv("riskpo", batch, bundle_size=2, signal="reward"), adv("riskpo", batch, bundle_size=2), atol=1e-5
    )
    # all-wrong question whose format term varies: correctness std 0 -> divisor 1; reward std 0.0577 -> divisor 0.0577
    wrong = outcome_batch([0.1, 0.0, 0.1, 0.0], [0, 0, 0, 0], correct=[0.0, 0.0, 0.0, 0.0])
    a_c = adv("riskpo", wrong, bundle_size=1)[:, 0]
    a_r = adv("riskpo", wrong, bundle_size=1, signal="reward")[:, 0]
    assert np.abs(a_c).max() == 0.0  # X = 0 everywhere: q_dn = q_up = 0, every term 0
    assert np.abs(a_r).max() > 1.0  # the format spread alone is amplified by 1 / 0.0577


def test_riskpo_pure_rvar_and_score_credit():
    """w_mix = 0: the spec's g_RVaR = [0, -.999999, -.999999, -1.57143] over std(X) = sqrt(2/3);
    credit 'score': 0.5 g where R > 0, else 1.5 g (from the spec's paper advantages)."""
    batch = outcome_batch(RISK_R, RISK_IDS)
    g_r = np.array([0, -0.999999, -0.999999, -1.57143]) / (math.sqrt(2 / 3) + 1e-6)
    A = adv("riskpo", batch, bundle_size=2, credit="uniform", w_mix=0.0)[:, 0]
    np.testing.assert_allclose(A, np.tile(g_r, 2), rtol=1e-5)
    paper = np.array([0, -0.489897, -0.489897, -2.97436])
    scale = np.where(np.array(RISK_R) > 0, 0.5, 1.5)
    A = adv("riskpo", batch, bundle_size=2, credit="score")[:, 0]
    np.testing.assert_allclose(A, np.tile(paper, 2) * scale, rtol=1e-5, atol=1e-12)


def test_riskpo_sum_mean_credit_by_hand():
    """'sum_mean' splits a paper's advantage by R - mean_q (both means 0.5): paper 0 devs (.5, .5),
    share .5 each (0 * .5); papers 1 and 2 devs (-.5, .5) sum to 0: equal split g/2 = -.244949;
    paper 3 devs (-.5, -.5): share .5, -2.97436 / 2."""
    A = adv("riskpo", outcome_batch(RISK_R, RISK_IDS), bundle_size=2, credit="sum_mean")[:, 0]
    expected = np.array([0, -0.489897, -0.489897, -2.97436]) / 2
    np.testing.assert_allclose(A, np.tile(expected, 2), rtol=1e-5)


def naive_riskpo(R: np.ndarray, ids: list[int], bundles: list[list[int]], cfg: RiskPOAdvantage) -> np.ndarray:
    """The spec's numpy snippet generalised to several bundles and unequal groups (papers = the
    smallest group of the bundle), credit 'std'."""
    A = np.zeros(len(R))
    ids = np.asarray(ids)
    for bundle in bundles:
        rows = [np.nonzero(ids == q)[0] for q in bundle]
        n = min(len(r) for r in rows)
        X = sum(R[r[:n]] for r in rows)
        if n > 1:
            q_dn, q_up, sd_x = np.quantile(X, cfg.alpha_dn), np.quantile(X, cfg.alpha_up), X.std(ddof=1)
        else:
            q_dn = q_up = X[0]
            sd_x = 1.0
        eps = cfg.eps
        g_r = (np.maximum(X - q_dn, 0) - np.maximum(X - q_up, 0) + q_dn - q_up) / (cfg.alpha_up - cfg.alpha_dn + eps)
        g_c = -np.maximum(q_dn - X, 0) / (cfg.alpha_dn + eps)
        g = (cfg.w_mix * g_c + g_r) / (cfg.w_mix + 1) / (sd_x + eps)
        for r in rows:
            sd = R[r].std(ddof=1) if len(r) > 1 else 0.0
            A[r[:n]] = g / ((sd if sd > 1e-3 else 1.0) + eps)
    return A


@pytest.mark.parametrize("seed", range(3))
def test_riskpo_bundles_naive_equivalence(seed):
    """5 groups of sizes 4, 3, 4, 2, 4 (ids 0..4, rows shuffled), bundle_size 2: bundles {0,1},
    {2,3}, {4}; samples beyond a bundle's paper count get 0; against the naive numpy version.
    Explicit ``extras["bundle_ids"]`` override the consecutive bundling."""
    rng = np.random.default_rng(seed)
    ids = [g for g, size in enumerate([4, 3, 4, 2, 4]) for _ in range(size)]
    rng.shuffle(ids)
    R = rng.integers(0, 2, len(ids)).astype(np.float64)
    cfg = RiskPOAdvantage(bundle_size=2)
    expected = naive_riskpo(R, ids, [[0, 1], [2, 3], [4]], cfg)
    np.testing.assert_allclose(adv("riskpo", outcome_batch(list(R), ids), bundle_size=2)[:, 0], expected, atol=1e-10)
    bundle_of = {0: 7, 1: 3, 2: 3, 3: 7, 4: 7}
    batch = outcome_batch(list(R), ids, bundle_ids=[bundle_of[i] for i in ids])
    expected = naive_riskpo(R, ids, [[1, 2], [0, 3, 4]], cfg)
    np.testing.assert_allclose(adv("riskpo", batch, bundle_size=2)[:, 0], expected, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# DRPO
# ------------------------------------------------------------------------------------------------

DRPO_R = [1.0, 1.0, 0.0, 0.0]  # spec 11
# exp((1 - |o|/L_max) / lambda) for |o| = 3, 2, L_max = 4, lambda = 0.1, normalised over the correct answers
W_POS = np.array([math.exp(2.5), math.exp(5.0)]) / (math.exp(2.5) + math.exp(5.0))


def test_drpo_length_weights_match_spec():
    """Spec 11 prints the normalised positive weights [0.0758582, 0.924142]."""
    np.testing.assert_allclose(W_POS, [0.0758582, 0.924142], rtol=1e-5)


def drpo_negative_softmax() -> np.ndarray:
    """softmax(s_old / tau) over the incorrect answers 2, 3: s_old = mean of LP_OLD rows = -0.775, -2.2."""
    z = np.array([-0.775, -2.2]) / 10
    return np.exp(z) / np.exp(z).sum()


def test_drpo_advantage_spec_toy():
    """Correct answers 0, 1 get G * w~ (spec's w_pos with |o| = 3, 2 and L_max = 4); incorrect 2, 3
    get -G * softmax(s_old / 10) (1/(1 + exp(-0.1425)) = 0.535565 and its complement)."""
    batch, _ = toy(DRPO_R)
    A = adv("drpo", batch, max_length=4)
    expected = 4 * np.concatenate([W_POS, -drpo_negative_softmax()])
    np.testing.assert_allclose(A[:, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(A, expected[:, None] * MASK, rtol=1e-5)
    assert drpo_negative_softmax()[0] == pytest.approx(1 / (1 + math.exp(-0.1425)))


def test_drpo_advantage_invalid_groups_and_correct_extra():
    """A question with only correct (or only incorrect) answers gets 0; extras['correct'] replaces
    the reward; the padded length is L_max when max_length is None."""
    batch, _ = toy([1.0, 1.0, 1.0, 1.0])
    assert (adv("drpo", batch) == 0).all()
    batch, _ = toy([0.3, 0.3, 0.3, 0.3])
    batch.extras["correct"] = DRPO_R
    np.testing.assert_allclose(
        adv("drpo", batch)[:, 0], 4 * np.concatenate([W_POS, -drpo_negative_softmax()]), rtol=1e-5
    )


def test_drpo_advantage_takes_l_max_from_the_generation_budget():
    """With max_length None, L_max is the run's budget the loop records in extras['max_tokens'].
    Budget 8 instead of the padded 4: the correct answers (|o| = 3, 2) get
    softmax((1 - |o|/8) / 0.1) = softmax([6.25, 7.5]) = [1/(1 + e^1.25), e^1.25/(1 + e^1.25)]."""
    batch, _ = toy(DRPO_R)
    batch.extras["max_tokens"] = [8] * 4
    A = adv("drpo", batch)
    w = np.array([1.0, math.exp(1.25)]) / (1 + math.exp(1.25))
    np.testing.assert_allclose(A[:2, 0], 4 * w, rtol=1e-5)
    np.testing.assert_allclose(adv("drpo", batch, max_length=8), A, rtol=1e-6)  # explicit = recorded


def drpo_toy() -> tuple[RolloutBatch, torch.Tensor]:
    batch, lp = toy(DRPO_R)
    batch.advantages = torch.tensor(adv("drpo", batch, max_length=4))
    return batch, lp


def test_drpo_minibatch_scope_spec_example():
    """Spec 11 (tau 10, beta 1e3, delta 1e-4, k1 KL, one question): the spec's gradient exactly.
    Value: the spec's gradient-equivalent loss -0.570646 minus its penalty coef * KL = 2.9 * 0.003
    plus this part's squared hinge (beta/2)(KL - delta)^2 = 500 * 0.0029^2 = 0.004205 (same
    gradient): -0.575141."""
    batch, lp = drpo_toy()
    out, grad = loss_and_grad("drpo", batch, lp, scope="minibatch", kl_estimator="k1")
    expected = [
        [-0.315286, -0.315286, -0.315286, 0],
        [-0.752071, -0.752071, 0, 0],
        [-0.152464, -0.152464, -0.152464, -0.152464],
        [0.159857, 0, 0, 0],
    ]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)
    assert out.loss.item() == pytest.approx(-0.570646 - 2.9 * 0.003 + 500 * 0.0029**2, rel=1e-5)
    assert out.metrics["drpo/kl"] == pytest.approx(0.003)
    assert out.metrics["drpo/penalty_frac"] == 1.0


def test_drpo_scopes_agree_on_policy():
    """At lp = old (the first update of a step) both scopes give the code's gradient: correct answers
    -w~_i / |o_i| per token, incorrect p_j / |o_j| (p = softmax(s_old / tau)), KL 0 so no penalty.
    The sequence scope's value is -sum w~ s_old + tau (the code's reported value)."""
    batch, _ = drpo_toy()
    lp = torch.tensor(LP_OLD, requires_grad=True)
    coef = np.concatenate([-W_POS, drpo_negative_softmax()])
    expected = coef[:, None] / LENGTHS[:, None] * MASK
    out_seq, g_seq = loss_and_grad("drpo", batch, lp)
    _, g_mb = loss_and_grad("drpo", batch, lp, scope="minibatch")
    np.testing.assert_allclose(g_seq, expected, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(g_mb, expected, rtol=1e-5, atol=1e-12)
    s_old = (LP_OLD * MASK).sum(1) / LENGTHS
    assert out_seq.loss.item() == pytest.approx(-(W_POS * s_old[:2]).sum() + 10.0, rel=1e-5)


@pytest.mark.parametrize("estimator", ["k3", "k1"])
def test_drpo_sequence_scope_off_policy_by_formula(estimator):
    """Off-policy (the spec's lp), N = G = 4: correct answers keep -w~_i / |o_i|; incorrect ones get
    p_j exp(Delta_j / tau) / |o_j| (numerator exact, normaliser at the behaviour policy); the
    per-sequence hinge adds (beta / N) max(K_i - delta, 0) dK_i/dlp_it, with K_i the token mean of
    k3 = r - 1 - log r (dK_i/dlp_it = (r_it - 1) / |o_i|) or of k1 = -(lp - old) (-1 / |o_i|)."""
    batch, lp = drpo_toy()
    _, grad = loss_and_grad("drpo", batch, lp, kl_estimator=estimator)
    d = (LP - LP_OLD) * MASK
    delta_s = d.sum(1) / LENGTHS
    coef = np.concatenate([-W_POS, drpo_negative_softmax() * np.exp(delta_s[2:] / 10)])
    expected = coef[:, None] / LENGTHS[:, None] * MASK
    r = np.exp(d)
    if estimator == "k3":
        K, dK = ((r - 1 - d) * MASK).sum(1) / LENGTHS, (r - 1) / LENGTHS[:, None]
    else:
        K, dK = -delta_s, -np.ones_like(d) / LENGTHS[:, None]
    expected = expected + 1e3 / 4 * np.maximum(K - 1e-4, 0)[:, None] * dK * MASK
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_drpo_minibatch_scope_refuses_a_partial_minibatch():
    batch, lp = drpo_toy()
    micro = batch.select(torch.tensor([0, 1]), loss_scale=batch.scale())
    fn, Cfg = get("policy_loss", "drpo")
    assert Cfg(scope="minibatch").needs_whole_minibatch and not Cfg().needs_whole_minibatch
    with pytest.raises(ValueError, match="micro-batch-size"):
        fn(PolicyOutput(logprobs=lp[:2]), micro, Cfg(scope="minibatch"))


# ------------------------------------------------------------------------------------------------
# REC / OPMD / AsymRE
# ------------------------------------------------------------------------------------------------

A_REC = np.array([0.5, -0.5, 0.5, -0.5])  # R - mean of R = [1, 0, 1, 0] (std_normalize: false)


def rec_toy() -> tuple[RolloutBatch, torch.Tensor]:
    return toy([1.0, 0.0, 1.0, 0.0], A_REC)


@pytest.mark.parametrize(
    ("name", "cfg", "expected"),
    [
        ("rec", {}, [[-0.05, -0.05, 0, 0], [0, 0.05, 0, 0], [-0.05, 0, -0.05, -0.05], [0, 0, 0, 0]]),
        (
            "rec",
            {"weight": "importance_sampling"},
            [[-0.0552585, -0.0475615, 0, 0], [0, 0.0510101, 0, 0], [-0.0525636, 0, -0.0452419, -0.05], [0, 0, 0, 0]],
        ),
        (
            "opmd",
            {},
            [[-0.048, -0.051, -0.044, 0], [0.045, 0.0504, 0, 0], [-0.049, -0.042, -0.052, -0.05], [0.04, 0, 0, 0]],
        ),
        ("asymre", {}, [[-0.06, -0.06, -0.06, 0], [0.04, 0.04, 0, 0], [-0.06, -0.06, -0.06, -0.06], [0.04, 0, 0, 0]]),
        (
            "rec",
            {"clip_mode": "none", "weight": "advantage"},
            [
                [-0.0824361, -0.0824361, -0.0824361, 0],
                [0.0303265, 0.0303265, 0, 0],
                [-0.0824361, -0.0824361, -0.0824361, -0.0824361],
                [0.0303265, 0, 0, 0],
            ],
        ),
    ],
    ids=["rec_oneside_nois", "rec_oneside_is", "opmd", "asymre", "red_weight"],
)
def test_rec_family_spec_gradients(name, cfg, expected):
    """Spec 14: dL/dlp on the toy batch (token-mean over its 10 tokens, A = R - mean)."""
    batch, lp = rec_toy()
    _, grad = loss_and_grad(name, batch, lp, **cfg)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)


def test_rec_family_values_by_hand():
    """Values (token-mean, N_tok = 10): REC-OneSide-NoIS sum over kept tokens of -A lp / 10;
    OPMD sum(-A lp + 0.1 (lp - old)^2) / 10; AsymRE sum(-(A + 0.1) lp) / 10."""
    batch, lp = rec_toy()
    A = A_REC[:, None] * MASK
    r = np.exp(LP - LP_OLD)
    keep = ((r <= 1.2) & (A >= 0)) | ((r >= 0.8) & (A <= 0))
    values = {
        "rec": (-A * LP * keep * MASK).sum() / 10,
        "opmd": ((-A * LP + 0.1 * (LP - LP_OLD) ** 2) * MASK).sum() / 10,
        "asymre": (-(A + 0.1) * LP * MASK).sum() / 10,
    }
    for name, value in values.items():
        out, _ = loss_and_grad(name, batch, lp)
        assert out.loss.item() == pytest.approx(value, rel=1e-12)
        assert out.reductions["policy/loss"] == "sum"


def test_rec_two_side_and_gspo_one_side_by_hand():
    """Toy ratios r = exp(lp - old): two_side [0.8, 1.2] drops (0,2) r=1.35, (1,0) 0.78, (2,1)
    1.49, (3,0) 0.61. gspo_one_side with eps 0.2 uses s_i = [1.124, 0.891, 1.091, 0.607] (spec
    2.4): only sequence 3 (A < 0, s < 0.8) is dropped; with GSPO's eps 3e-4 / 4e-4 every
    sequence is out and the gradient is 0. Gradients -A * keep / 10."""
    batch, lp = rec_toy()
    A = A_REC[:, None] * MASK
    keep = np.ones_like(MASK)
    keep[0, 2] = keep[1, 0] = keep[2, 1] = keep[3, 0] = 0
    _, grad = loss_and_grad("rec", batch, lp, clip_mode="two_side")
    np.testing.assert_allclose(grad, -A * keep * MASK / 10, atol=1e-12)
    _, grad = loss_and_grad("rec", batch, lp, clip_mode="gspo_one_side")
    keep = np.array([1, 1, 1, 0.0])[:, None]
    np.testing.assert_allclose(grad, -A * keep * MASK / 10, atol=1e-12)
    out, grad = loss_and_grad("rec", batch, lp, clip_mode="gspo_one_side", eps_low=3e-4, eps_high=4e-4)
    assert (grad == 0).all() and out.metrics["policy/clipfrac"] == 1.0


def test_rec_ring_mask_by_hand():
    """Ring (eps 0.2, eps' 0.6 / 2.0): A = +1 with r = [0.3, 0.9, 1.5]: 0.3 <= 0.4 kept (ring),
    0.9 in band, 1.5 out; A = -1 with r = [0.5, 1.1, 3.5]: 0.5 out, 1.1 in band, 3.5 >= 3 kept."""
    r = torch.tensor([[0.3, 0.9, 1.5], [0.5, 1.1, 3.5]], dtype=torch.float64)
    a = torch.tensor([[1.0] * 3, [-1.0] * 3], dtype=torch.float64)
    keep = rec_in_range(r, r, a, REC(clip_mode="ring"))
    assert keep.tolist() == [[True, True, False], [False, True, True]]
    keep = rec_in_range(r, r, a, REC(clip_mode="two_side"))
    assert keep.tolist() == [[False, True, False], [False, True, False]]


def test_rec_truncated_is_weight_by_hand():
    """truncated_importance_sampling clips r to [1 - 0.6, 1 + 2.0]: on the toy every r is inside,
    so it equals importance_sampling; with eps_low_prime 0.1 the weights are clip(r, 0.9, 3.0)."""
    batch, lp = rec_toy()
    _, g_is = loss_and_grad("rec", batch, lp, weight="importance_sampling")
    _, g_tis = loss_and_grad("rec", batch, lp, weight="truncated_importance_sampling")
    np.testing.assert_allclose(g_tis, g_is, rtol=1e-12)
    _, g = loss_and_grad("rec", batch, lp, clip_mode="none", weight="truncated_importance_sampling", eps_low_prime=0.1)
    w = np.clip(np.exp(LP - LP_OLD), 0.9, 3.0)
    np.testing.assert_allclose(g, -A_REC[:, None] * w * MASK / 10, rtol=1e-12, atol=1e-15)


def test_rec_without_old_logprobs():
    """clip_mode none with no ratio weight (and AsymRE) need no old_logprobs; a clip mode does."""
    batch, lp = rec_toy()
    batch.old_logprobs = None
    _, grad = loss_and_grad("rec", batch, lp, clip_mode="none")
    np.testing.assert_allclose(grad, -A_REC[:, None] * MASK / 10)
    loss_and_grad("asymre", batch, lp)
    with pytest.raises(ValueError, match="old_logprobs"):
        loss_and_grad("rec", batch, lp)
    with pytest.raises(ValueError, match="old_logprobs"):
        loss_and_grad("opmd", batch, lp)


# ------------------------------------------------------------------------------------------------
# Every loss configuration: float64 finite-difference gradients and the micro-batch contract
# ------------------------------------------------------------------------------------------------

LOSS_CONFIGS = [
    ("rec", {}),
    ("rec", {"clip_mode": "two_side", "weight": "importance_sampling"}),
    ("rec", {"clip_mode": "ring", "weight": "truncated_importance_sampling"}),
    ("rec", {"clip_mode": "gspo_one_side", "weight": "gspo_importance_sampling", "aggregation": "seq_mean_token_mean"}),
    ("rec", {"clip_mode": "none", "weight": "advantage", "tis": "token"}),
    ("opmd", {}),
    ("opmd", {"aggregation": "seq_mean_token_sum"}),
    ("asymre", {}),
    ("drpo", {}),
    ("drpo", {"kl_estimator": "k3", "aggregation": "token_mean"}),
]
N, T = 8, 6


def random_batch(seed: int, spread: float) -> tuple[RolloutBatch, torch.Tensor]:
    """8 sequences in 2 groups of 4 (lengths 6, 4, 1, 3, 5, 2, 6, 4, one hole), binary rewards with
    both outcomes in each group, drpo advantages (so the drpo loss sees its own part's input)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [6, 4, 1, 3, 5, 2, 6, 4]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    mask[6, 2] = 0
    old = -torch.rand(N, T, generator=g, dtype=torch.float64) * 2
    batch = RolloutBatch(
        response_mask=mask,
        group_ids=torch.tensor([3, 3, 3, 3, 9, 9, 9, 9]),
        rewards=torch.tensor([1.0, 0, 1, 0, 0, 0, 1, 1], dtype=torch.float64),
        old_logprobs=old,
        rollout_logprobs=old + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * 0.1,
    )
    fn, Cfg = get("advantage", "drpo")
    batch.advantages = fn(batch, Cfg(max_length=T)) + torch.randn(N, T, generator=g, dtype=torch.float64) * 0.3 * mask
    lp = old + (torch.rand(N, T, generator=g, dtype=torch.float64) * 2 - 1) * spread
    return batch, lp.requires_grad_(True)


@pytest.mark.parametrize("spread", [0.05, 0.5])
@pytest.mark.parametrize(("name", "cfg"), LOSS_CONFIGS)
def test_gradcheck(name, cfg, spread):
    """torch.autograd.gradcheck in float64. Stop-gradient weights (importance sampling) are frozen
    by moving old_logprobs together with lp in the finite differences (the ratio stays constant)."""
    batch, lp = random_batch(int(spread * 100), spread)
    fn, Cfg = get("policy_loss", name)
    config = Cfg(**cfg)
    old0, lp0 = batch.old_logprobs.clone(), lp.detach().clone()
    frozen_ratio = name == "rec" and config.weight in (
        "importance_sampling",
        "truncated_importance_sampling",
        "gspo_importance_sampling",
    )

    def loss(x: torch.Tensor) -> torch.Tensor:
        if frozen_ratio:
            batch.old_logprobs = old0 + (x - lp0)
        return fn(PolicyOutput(logprobs=x), batch, config).loss

    assert torch.autograd.gradcheck(loss, (lp,), eps=1e-6, atol=1e-7)


def test_gradcheck_drpo_minibatch_scope():
    """The exact (whole mini-batch) DRPO objective is a smooth function of lp: gradcheck it."""
    batch, lp = random_batch(5, 0.3)
    fn, Cfg = get("policy_loss", "drpo")
    assert torch.autograd.gradcheck(
        lambda x: fn(PolicyOutput(logprobs=x), batch, Cfg(scope="minibatch")).loss, (lp,), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize(("name", "cfg"), LOSS_CONFIGS)
def test_microbatch_contract(name, cfg):
    """Micro-batches (uneven, shuffled, groups split) built with select(idx, loss_scale=batch.scale())
    sum to the mini-batch's loss and gradient."""
    batch, lp = random_batch(7, 0.4)
    fn, Cfg = get("policy_loss", name)
    config = Cfg(**cfg)
    whole = fn(PolicyOutput(logprobs=lp), batch, config).loss
    (g_whole,) = torch.autograd.grad(whole, lp)
    total = torch.zeros((), dtype=torch.float64)
    for idx in ([5, 0, 2], [7], [1, 3, 4, 6]):
        index = torch.tensor(idx)
        micro = batch.select(index, loss_scale=batch.scale())
        total = total + fn(PolicyOutput(logprobs=lp[index]), micro, config).loss
    (g_micro,) = torch.autograd.grad(total, lp)
    torch.testing.assert_close(total, whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_micro, g_whole, rtol=1e-10, atol=1e-12)


def test_minibatch_scope_with_whole_micro_batch_and_scale():
    """scope='minibatch' accepts a micro-batch that is the whole mini-batch (loss_scale set by the
    loop, same number of sequences)."""
    batch, lp = random_batch(3, 0.2)
    fn, Cfg = get("policy_loss", "drpo")
    whole = fn(PolicyOutput(logprobs=lp), batch, Cfg(scope="minibatch")).loss
    batch.loss_scale = LossScale(num_tokens=float(batch.response_mask.sum()), num_seqs=float(N), norm_length=64.0)
    assert fn(PolicyOutput(logprobs=lp), batch, Cfg(scope="minibatch")).loss.item() == pytest.approx(whole.item())


def test_configs_declare_needs():
    """Group-relative advantages; no loss is restricted to on-policy data; no reference, critic or logits."""
    for name in ("bnpo", "riskpo", "drpo"):
        assert get("advantage", name)[1]().group_relative
    for name in ("rec", "opmd", "asymre", "drpo"):
        cfg = get("policy_loss", name)[1]()
        assert not cfg.requires_on_policy and not cfg.needs_ref_logprobs and not cfg.needs_logits
    with pytest.raises(ValueError):
        RiskPOAdvantage(alpha_dn=0.9, alpha_up=0.2)
    with pytest.raises(ValueError):
        REC(clip_mode="one-side")  # Trinity's spelling: here snake_case
