"""Regularizers: the KL penalty (k1/k2/k3 against numpy) and the entropy bonus (by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anypo.registry import get
from anypo.types import PolicyOutput, RolloutBatch

MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=np.float64)
LP_OLD = np.array([[-1.0, -0.5, -2.0, 0], [-0.7, -1.2, 0, 0], [-0.3, -0.9, -1.5, -0.4], [-2.2, 0, 0, 0]])
LP = LP_OLD + np.array([[0.1, -0.05, 0.3, 0], [-0.25, 0.02, 0, 0], [0.05, 0.4, -0.1, 0.0], [-0.5, 0, 0, 0]])
LP_REF = LP_OLD + np.array([[-0.2, 0.1, 0.0, 0], [0.3, -0.1, 0, 0], [0.0, 0.2, -0.3, 0.1], [0.4, 0, 0, 0]])


def _batch(**kw) -> RolloutBatch:
    return RolloutBatch(torch.tensor(MASK), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.float64), **kw)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_kl_penalty_numpy(estimator, aggregation):
    """Per-token k1 = lp - ref, k2 = (lp - ref)^2 / 2, k3 = e^(ref - lp) - 1 - (ref - lp), aggregated
    with numpy; the loss is coef times the metric kl/ref; dL/dlp = coef * dk/dlp * weight."""
    d = LP - LP_REF
    k = {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(-d) - 1 + d}[estimator]
    dk = {"k1": np.ones_like(d), "k2": d, "k3": 1 - np.exp(-d)}[estimator]
    if aggregation == "token_mean":
        value, weight = (k * MASK).sum() / MASK.sum(), MASK / MASK.sum()
    else:
        lengths = MASK.sum(1, keepdims=True)
        value, weight = ((k * MASK).sum(1) / lengths[:, 0]).mean(), MASK / lengths / 4
    fn, Cfg = get("regularizer", "kl")
    lp = torch.tensor(LP, requires_grad=True)
    out = fn(
        PolicyOutput(logprobs=lp),
        _batch(ref_logprobs=torch.tensor(LP_REF)),
        Cfg(coef=0.5, estimator=estimator, aggregation=aggregation),
    )
    assert out.metrics["kl/ref"] == pytest.approx(value, rel=1e-10)
    assert out.loss.item() == pytest.approx(0.5 * value, rel=1e-10)
    (grad,) = torch.autograd.grad(out.loss, lp)
    np.testing.assert_allclose(grad.numpy(), 0.5 * dk * weight, rtol=1e-10, atol=1e-14)


def test_kl_needs_reference_only_when_active():
    fn, Cfg = get("regularizer", "kl")
    assert Cfg().needs_ref_logprobs and not Cfg(coef=0.0).needs_ref_logprobs
    lp = torch.tensor(LP, requires_grad=True)
    out = fn(PolicyOutput(logprobs=lp), _batch(), Cfg(coef=0.0))
    assert out.loss.item() == 0.0 and out.loss.dtype == torch.float64
    with pytest.raises(ValueError, match="ref_logprobs"):
        fn(PolicyOutput(logprobs=lp), _batch(), Cfg(coef=0.1))
    with pytest.raises(ValueError, match="estimator"):
        Cfg(estimator="k4")


def test_entropy_bonus_by_hand():
    """H = [[0.5, 1.0], [2.0, (pad) 9.0]], mask [[1, 1], [1, 0]]: token-mean 3.5 / 3;
    loss -0.01 * 3.5 / 3; dL/dH = -0.01 / 3 on the three valid tokens, 0 on padding."""
    fn, Cfg = get("regularizer", "entropy")
    assert Cfg().needs_entropy
    H = torch.tensor([[0.5, 1.0], [2.0, 9.0]], dtype=torch.float64, requires_grad=True)
    batch = RolloutBatch(torch.tensor([[1, 1], [1, 0]]), torch.zeros(2, dtype=torch.long), torch.zeros(2).double())
    out = fn(PolicyOutput(logprobs=torch.zeros(2, 2), entropy=H), batch, Cfg(coef=0.01))
    assert out.metrics["policy/entropy"] == pytest.approx(3.5 / 3)
    assert out.loss.item() == pytest.approx(-0.01 * 3.5 / 3)
    (grad,) = torch.autograd.grad(out.loss, H)
    np.testing.assert_allclose(grad.numpy(), [[-0.01 / 3, -0.01 / 3], [-0.01 / 3, 0.0]])
    with pytest.raises(ValueError, match="entropy"):
        fn(PolicyOutput(logprobs=torch.zeros(2, 2)), batch, Cfg())
