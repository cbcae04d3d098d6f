"""The advantage parts' diagnostics (``RolloutBatch.add_metric`` -> ``part_metrics``, logged by the
loop as ``advantage/<key>``): GPG's alpha, XRPO's bonus share and mean bonus, DCPO's alpha and target
temperature. Expected values derived by hand in each docstring."""

from __future__ import annotations

import math

import pytest
import torch

from anypo.registry import get
from anypo.rollout.stats import advantage_metrics
from anypo.types import RolloutBatch

F64 = torch.float64


def _batch(rewards, group_ids, old=None, T=2) -> RolloutBatch:
    n = len(rewards)
    return RolloutBatch(
        response_mask=torch.ones(n, T),
        group_ids=torch.tensor(group_ids),
        rewards=torch.tensor(rewards, dtype=F64),
        old_logprobs=old if old is not None else torch.full((n, T), -1.0, dtype=F64),
    )


def _run(name, batch, **cfg):
    fn, Cfg = get("advantage", name)
    A = fn(batch, Cfg(**cfg))
    return A, dict(batch.part_metrics or {})


def test_add_metric_records_floats_and_the_loop_prefixes_them():
    """add_metric creates the dict on first use and stores Python floats (a 0-d tensor too);
    advantage_metrics logs them as advantage/<key> next to the advantage scale."""
    b = _batch([1.0, 0.0], [0, 0])
    assert b.part_metrics is None
    b.add_metric("alpha", torch.tensor(2.0, dtype=F64))
    b.add_metric("x", 3)
    assert b.part_metrics == {"alpha": 2.0, "x": 3.0} and all(type(v) is float for v in b.part_metrics.values())
    b.advantages = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    m = advantage_metrics(b)
    assert m == {"advantage/alpha": 2.0, "advantage/x": 3.0, "advantage/abs_mean": 0.875, "advantage/abs_max": 2.0}


def test_gpg_logs_alpha():
    """Groups [1, 0] (a reward spread) and [1, 1] (none): B = 4 samples, M = 2 in the flat group, so
    alpha = B / (B - M) = 2; with max_alpha 1.5 the logged alpha is the capped 1.5. No group with a
    spread: alpha = 1."""
    _, m = _run("gpg", _batch([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1]))
    assert m == {"alpha": 2.0}
    _, m = _run("gpg", _batch([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1]), max_alpha=1.5)
    assert m == {"alpha": 1.5}
    _, m = _run("gpg", _batch([1.0, 1.0, 0.0, 0.0], [0, 0, 1, 1]))
    assert m == {"alpha": 1.0}


def test_xrpo_logs_bonus_share_and_mean():
    """Group 0: R = [1, 0], token log-probs -2 and -1 (s = [-2, -1], mean -1.5). A = +-0.5 /
    (sqrt(1/2) + 1e-6). The correct answer is less likely than the mean: eta = exp(-0.5), bonus
    min(1 - exp(-0.5), |A|) = 1 - exp(-0.5) = 0.393469 (< 0.7071). Group 1: R = [0, 1] with equal s:
    eta = 1, bonus 0. So 1 response of 4 gets a bonus: bonus_frac = 0.25, bonus_mean = 0.393469
    (mean over the responses that got one). All rewards equal: no bonus, both 0."""
    old = torch.tensor([[-2.0, -2.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]], dtype=F64)
    A, m = _run("xrpo", _batch([1.0, 0.0, 0.0, 1.0], [0, 0, 1, 1], old))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert float(A[0, 0]) == pytest.approx(a + 1 - math.exp(-0.5), rel=1e-12)
    assert m["bonus_frac"] == 0.25
    assert m["bonus_mean"] == pytest.approx(1 - math.exp(-0.5), rel=1e-12)
    _, m = _run("xrpo", _batch([1.0, 1.0, 0.0, 0.0], [0, 0, 1, 1], old))
    assert m == {"bonus_frac": 0.0, "bonus_mean": 0.0}


def test_dcpo_logs_alpha_temperature_and_statistics():
    """No state (H_prev = 0 <= H0 = 0.5): T = 1.2. R = [1, 0, 1, 0]: b = [1, 0, 1, 0], p = 0.5;
    a = min(|0.5 - 0|, 0.1) / 0.5 = 0.2, alpha = 0.2 / 1.2 = 1/6. With state H_prev = 0.7 > H0:
    T = 0.8, a = min(0.2, 0.1) / 0.5 = 0.2 again, alpha 1/6, h_prev 0.7."""
    from anypo.advantages.dcpo import tempered_key

    def batch():
        b = _batch([1.0, 0.0, 1.0, 0.0], [0, 0, 0, 0])
        for t in (1.2, 0.8, 1.0):
            b.extras[tempered_key(t)] = torch.full((4, 2), -t, dtype=F64)
        return b

    _, m = _run("dcpo", batch())
    assert m == pytest.approx({"alpha": 1 / 6, "temperature": 1.2, "h_prev": 0.0, "success_frac": 0.5})
    b = batch()
    b.part_state = {"h_prev": 0.7}
    _, m = _run("dcpo", b)
    assert m == pytest.approx({"alpha": 1 / 6, "temperature": 0.8, "h_prev": 0.7, "success_frac": 0.5})
