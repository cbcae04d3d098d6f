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
