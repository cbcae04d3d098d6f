"""SPO's win-rate advantage (anypo.advantages.spo): spec section 3's vectors and hand-derived groups."""

from __future__ import annotations

import pytest
import torch

from anypo.advantages.spo import SPOAdvantage, win_rates
from anypo.registry import get
from anypo.types import RolloutBatch


def batch_of(rewards, groups, extras=None, T=3):
    N = len(rewards)
    return RolloutBatch(
        response_mask=torch.ones(N, T), group_ids=torch.tensor(groups), rewards=torch.tensor(rewards, dtype=torch.float32),
        extras=extras or {},
    )  # fmt: skip


def test_spec_vectors():
    """Spec section 3: A > B > C > A, all beat D. Excluding self: A wins 1 of its 3 games against B, C,
    D... A beats B and D, loses C: 2/3, likewise B and C; D 0 -> [2/3, 2/3, 2/3, 0]. Including self
    (1/2 for itself, over K = 4): (2 + 1/2)/4 = 0.625, D (0 + 1/2)/4 = 0.125."""
    P = torch.tensor([[0.5, 1, 0, 1], [0, 0.5, 1, 1], [1, 0, 0.5, 1], [0, 0, 0, 0.5]], dtype=torch.float64)
    assert win_rates(P).tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 0.0])
    assert win_rates(P, "include_self").tolist() == pytest.approx([0.625, 0.625, 0.625, 0.125])


def test_reward_bt_hard_comparisons_by_hand():
    """Group 0, rewards (1, 0, 0.5, 0.5) at T = 0: sample 0 beats all three -> 1; sample 1 loses all -> 0;
    samples 2 and 3 beat 1, tie each other (1/2), lose to 0 -> (1 + 1/2 + 0)/3 = 1/2. Mean 1/2, so
    A = (1/2, -1/2, 0, 0). Group 1 (rewards 3, 3): a tie, A = 0. Group 2 (one sample): 0.
    Broadcast over the response tokens."""
    b = batch_of([1.0, 0.0, 0.5, 0.5, 3.0, 3.0, 7.0], [0, 0, 0, 0, 1, 1, 2])
    A = get("advantage", "spo")[0](b, SPOAdvantage())
    assert A.shape == (7, 3) and A.dtype == torch.float32
    assert A[:, 0].tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert torch.equal(A[:, 0:1].expand(7, 3), A)
    assert b.part_metrics["win_rate_spread"] == pytest.approx((1.0 + 0.0) / 2)


def test_reward_bt_soft_by_hand():
    """Two samples, rewards (1, 0), T = 1: P = sigmoid(1) = 0.731059; win rates (0.731059, 0.268941),
    mean 1/2: A = +-0.231059."""
    A = get("advantage", "spo")[0](batch_of([1.0, 0.0], [0, 0]), SPOAdvantage(temperature=1.0))
    assert A[:, 0].tolist() == pytest.approx([0.231059, -0.231059], abs=1e-6)


def test_intransitive_cycle_gives_the_spec_matrix():
    """Budget 10. Grades (correct, length, format): A 'The sum is 68' (2, -3, 0), B
    'Let me add these.\\nAnswer: 12' (1, -18, 3), C 'Answer: ?' (0, 0, 2), D 'x' * 30 (0, -20, 0).
    A > B > C > A (test_oracles), and each beats D (A: correct, length; B: all three; C: length,
    format): spec section 3's matrix, win rates (2/3, 2/3, 2/3, 0), A = (1/6, 1/6, 1/6, -1/2)."""
    texts = ["The sum is 68", "Let me add these.\nAnswer: 12", "Answer: ?", "x" * 30]
    b = batch_of([0.0] * 4, [0] * 4, {"text": texts, "correct": [1.0, 0.0, 0.0, 0.0]})
    A = get("advantage", "spo")[0](b, SPOAdvantage(preference="intransitive", length_budget=10))
    assert A[:, 0].tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, -0.5], abs=1e-6)


def test_unjudged_samples_are_left_out():
    """Sample 1's reward failed: the group is samples 0 and 2 (rewards 1, 0): A = (1/2, 0, -1/2)."""
    b = batch_of([1.0, 5.0, 0.0], [0, 0, 0], {"reward_error": [False, True, False]})
    assert get("advantage", "spo")[0](b, SPOAdvantage())[:, 0].tolist() == pytest.approx([0.5, 0.0, -0.5])


def test_errors():
    with pytest.raises(ValueError, match="extras\\['text'\\]"):
        get("advantage", "spo")[0](batch_of([1.0, 0.0], [0, 0]), SPOAdvantage(preference="intransitive"))
    for kw, word in (({"preference": "x"}, "preference"), ({"temperature": -1.0}, "temperature"),
                     ({"length_budget": 0}, "length_budget"), ({"convention": "x"}, "convention")):  # fmt: skip
        with pytest.raises(ValueError, match=word):
            SPOAdvantage(**kw)
