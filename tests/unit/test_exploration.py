"""Exploration and entropy-control parts (issue 13): LLDS, EPO, DCPO, Lp-Reg.

Expected values are derived by hand (the derivation in each docstring) or by an independent numpy /
plain-python computation; every loss has a float64 finite-difference gradient check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anypo.registry import get
from anypo.types import LossScale, PolicyOutput, RolloutBatch

F64 = torch.float64


def _batch(mask, adv=None, old=None, rewards=None, **kw) -> RolloutBatch:
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float64))
    n, t = mask.shape
    return RolloutBatch(
        response_mask=mask,
        group_ids=kw.pop("group_ids", torch.zeros(n, dtype=torch.long)),
        rewards=torch.zeros(n, dtype=F64) if rewards is None else torch.as_tensor(rewards, dtype=F64),
        advantages=None if adv is None else torch.as_tensor(np.asarray(adv, dtype=np.float64)),
        old_logprobs=None if old is None else torch.as_tensor(np.asarray(old, dtype=np.float64)),
        **kw,
    )


# ---------------------------------------------------------------- LLDS

# The spec's worked example (exploration-curricula.md section 3): response 0 has A = 0.5 and a tool
# output at position 2 (mask 0); response 1 has A = -0.5.
LLDS_M = [[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]]
LLDS_A = [[0.5] * 5, [-0.5] * 5]
LLDS_OLD = [[-0.5, -1.0, -3.0, -0.2, -2.0], [-0.3, -0.4, -0.6, 0.0, 0.0]]
LLDS_NEW = [[-0.7, -0.9, -3.0, -0.25, -1.9], [-0.5, -0.6, -0.9, 0.0, 0.0]]


def _llds(lp, batch, **cfg):
    fn, Cfg = get("regularizer", "llds")
    return fn(PolicyOutput(logprobs=lp), batch, Cfg(**cfg))


@pytest.mark.parametrize(
    ("gate", "expected", "grad_tokens"),
    [("response", 0.25 * 0.2 / 7, [(0, 0), (0, 3)]), ("action", 0.2 * 0.2 / 7, [(0, 0)])],
)
def test_llds_spec_example(gate, expected, grad_tokens):
    """d = old - lp = [[0.2, -0.1, 0, 0.05, -0.1], [0.2, 0.2, 0.3, 0, 0]]. Response 1 has A < 0: never
    regularised. Response gate: sum of d over response 0's masked tokens = 0.2 - 0.1 + 0.05 - 0.1 =
    0.05 > 0, on; the hinge sums relu(d) = 0.2 + 0.05 = 0.25 over its 4 tokens, so L = 0.2 * 0.25 / 7
    (7 response tokens) = 0.007143. Action gate: the tool output at t = 2 splits response 0 into
    actions [0, 1] (sum 0.1, on) and [3, 4] (sum -0.05, off): L = 0.2 * 0.2 / 7 = 0.005714.
    dL/dlp = -lambda / 7 on the penalised tokens (d > 0, gate on), 0 elsewhere."""
    lp = torch.tensor(LLDS_NEW, dtype=F64, requires_grad=True)
    out = _llds(lp, _batch(LLDS_M, LLDS_A, LLDS_OLD), gate=gate)
    assert float(out.loss.detach()) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx({"response": 0.007143, "action": 0.005714}[gate], abs=1e-6)
    out.loss.backward()
    want = torch.zeros(2, 5, dtype=F64)
    for i, t in grad_tokens:
        want[i, t] = -0.2 / 7
    torch.testing.assert_close(lp.grad, want, rtol=0, atol=1e-14)
    assert out.metrics["llds/penalized_frac"] == pytest.approx(len(grad_tokens) / 7)
    # preserving-set displacement: sum of d over response 0's masked tokens = 0.05, over 7 tokens
    assert out.metrics["llds/displacement"] == pytest.approx(0.05 / 7)


def test_llds_is_zero_at_the_first_update():
    """lp == old (the first mini-batch of a rollout batch): d = 0 everywhere, so every gate is off and
    the hinge is 0, with a zero gradient."""
    lp = torch.tensor(LLDS_OLD, dtype=F64, requires_grad=True)
    out = _llds(lp, _batch(LLDS_M, LLDS_A, LLDS_OLD))
    out.loss.backward()
    assert float(out.loss) == 0.0 and bool((lp.grad == 0).all())


def test_llds_answer_span_weight():
    """answer_lambda 0.05 on the answer span (extras answer_mask 0 at response 0, t = 0): that token's
    coefficient is min(0.05, 0.2) = 0.05. Response gate as above: L = (0.05 * 0.2 + 0.2 * 0.05) / 7."""
    answer = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    lp = torch.tensor(LLDS_NEW, dtype=F64)
    batch = _batch(LLDS_M, LLDS_A, LLDS_OLD, extras={"answer_mask": answer})
    out = _llds(lp, batch, gate="response", answer_lambda=0.05)
    assert float(out.loss) == pytest.approx((0.05 * 0.2 + 0.2 * 0.05) / 7, abs=1e-12)
    with pytest.raises(ValueError, match="answer_mask"):
        _llds(lp, _batch(LLDS_M, LLDS_A, LLDS_OLD), answer_lambda=0.05)


def _llds_naive(lp, old, adv, mask, lam, gate):
    """Plain-python LLDS: walk each row, cut it into actions at every token outside the preserving
    set, gate by the summed displacement, add lam * max(0, d) per gated token; token mean."""
    total, n_tok = 0.0, float(mask.sum())
    for i in range(lp.shape[0]):
        on = [mask[i, t] != 0 and adv[i, t] >= 0 for t in range(lp.shape[1])]
        d = [old[i, t] - lp[i, t] for t in range(lp.shape[1])]
        if gate == "response":
            spans = [[t for t in range(lp.shape[1]) if on[t]]]
        else:
            spans, cur = [], []
            for t in range(lp.shape[1]):
                if on[t]:
                    cur.append(t)
                elif cur:
                    spans.append(cur)
                    cur = []
            if cur:
                spans.append(cur)
        for span in spans:
            if span and sum(d[t] for t in span) > 0:
                total += sum(lam * max(0.0, d[t]) for t in span)
    return total / n_tok


@pytest.mark.parametrize("gate", ["action", "response"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_llds_matches_a_naive_loop(gate, seed):
    """Random rows with holes (tool outputs), mixed-sign advantages and displacements: the vectorised
    part equals the plain-python walk over actions."""
    rng = np.random.default_rng(seed)
    N, T = 6, 12
    mask = (rng.random((N, T)) > 0.2).astype(np.float64)
    adv = np.where(rng.random((N, T)) > 0.3, 1.0, -1.0) * rng.random((N, 1))
    old = -rng.random((N, T)) * 3
    lp = old + rng.normal(0, 0.3, (N, T))
    out = _llds(torch.tensor(lp), _batch(mask, adv, old), gate=gate, coef=0.3)
    assert float(out.loss) == pytest.approx(_llds_naive(lp, old, adv, mask, 0.3, gate), abs=1e-12)


@pytest.mark.parametrize("gate", ["action", "response"])
def test_llds_gradcheck(gate):
    """float64 finite differences of the loss in lp (random values: no displacement or action sum at a
    kink)."""
    rng = np.random.default_rng(3)
    mask = np.ones((3, 6))
    mask[0, 2] = mask[1, 4:] = 0
    adv = np.array([[1.0], [0.5], [-1.0]]) * np.ones((3, 6))
    adv[1, 1] = -0.2  # splits response 1 into two actions
    old = -rng.random((3, 6)) * 2
    batch = _batch(mask, adv, old)
    lp = torch.tensor(old + rng.normal(0, 0.2, (3, 6)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _llds(x, batch, gate=gate).loss, (lp,))


def test_llds_config_errors():
    Cfg = get("regularizer", "llds")[1]
    with pytest.raises(ValueError, match="gate"):
        Cfg(gate="turn")
    with pytest.raises(ValueError, match="coef"):
        Cfg(coef=-1.0)
    with pytest.raises(ValueError, match="aggregation"):
        Cfg(aggregation="mean")


def test_llds_scale_is_the_minibatch():
    """A micro-batch carries the mini-batch's token count (LossScale): the loss of response 0 alone,
    with 7 mini-batch tokens, is the same 0.2 * 0.2 / 7 as in the whole batch (response 1 adds 0)."""
    lp = torch.tensor(LLDS_NEW, dtype=F64)
    micro = _batch(LLDS_M, LLDS_A, LLDS_OLD).select(torch.tensor([0]), loss_scale=LossScale(7.0, 2.0))
    assert float(_llds(lp[:1], micro).loss) == pytest.approx(0.04 / 7, abs=1e-12)
