"""Per-step rollout metrics that every preset logs: length by correctness and advantage scale."""

from __future__ import annotations

import pytest
import torch

from anypo.rollout.stats import _mixed_correct, advantage_metrics, length_by_correctness
from anypo.types import RolloutBatch


def test_length_by_correctness_by_hand():
    """Lengths 3, 5, 10, 2 with correctness 1, 0, 1, 0: correct mean (3 + 10) / 2 = 6.5,
    incorrect mean (5 + 2) / 2 = 3.5."""
    m = length_by_correctness(torch.tensor([3.0, 5.0, 10.0, 2.0]), [1.0, 0.0, 1.0, 0.0])
    assert m == {"response/length_correct_mean": 6.5, "response/length_incorrect_mean": 3.5}


def test_length_by_correctness_one_side_or_unknown():
    """All wrong: only the incorrect mean; no correctness (or nan) logs nothing."""
    assert length_by_correctness(torch.tensor([4.0, 6.0]), [0.0, 0.0]) == {"response/length_incorrect_mean": 5.0}
    assert length_by_correctness(torch.tensor([4.0, 6.0]), []) == {}
    assert length_by_correctness(torch.tensor([4.0, 6.0]), [1.0, float("nan")]) == {}


def test_advantage_metrics_over_response_tokens_only():
    """Rows [1, -2 | pad 9] and [0.5 | pads 7, 7]: response tokens 1, -2, 0.5, so the mean of |A| is
    3.5 / 3 and the max 2; the padded 9 and 7 do not count."""
    batch = RolloutBatch(
        response_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]),
        group_ids=torch.tensor([0, 0]),
        rewards=torch.zeros(2),
        advantages=torch.tensor([[1.0, -2.0, 9.0], [0.5, 7.0, 7.0]]),
    )
    m = advantage_metrics(batch)
    assert m["advantage/abs_mean"] == pytest.approx(3.5 / 3)
    assert m["advantage/abs_max"] == 2.0


def test_mixed_correct_group_frac_by_hand():
    """Groups 0: (1, 0) mixed; 1: (0, 0) all wrong; 2: (1, 1, 1) all right; 3: (0, 1, 0) mixed: 2 of 4
    groups carry a correctness signal. No correctness term, a NaN, or a length mismatch: nothing."""
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 3])
    correct = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert _mixed_correct(ids, correct) == {"rollout/mixed_correct_group_frac": 0.5}
    assert _mixed_correct(ids, []) == {}
    assert _mixed_correct(ids, correct[:-1] + [float("nan")]) == {}
    assert _mixed_correct(ids[:3], correct) == {}
