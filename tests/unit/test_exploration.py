"""Exploration and entropy-control parts (issue 13): LLDS, EPO, DCPO, Lp-Reg.

Expected values are derived by hand (the derivation in each docstring) or by an independent numpy /
plain-python computation; every loss has a float64 finite-difference gradient check.
"""

from __future__ import annotations

import math

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
    assert float(out.loss.detach()) == 0.0 and bool((lp.grad == 0).all())


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


# ---------------------------------------------------------------- EPO

# The spec's worked example (section 1): two past iterations with per-turn entropies [1.0, 0.8, 0.6]
# and [0.9, 0.7, 0.5], so H_hist = [0.95, 0.75, 0.55]; sample 0 is a turn-0 sample, sample 1 a turn-2
# sample, three tokens each.
EPO_STATE = {"turn_entropy_sum": [1.9, 1.5, 1.1], "turn_count": [2, 2, 2], "updates": 0}
EPO_H = [[0.90, 1.30, 0.70], [0.50, 0.40, 0.66]]


def _epo(ent, batch, **cfg):
    fn, Cfg = get("regularizer", "epo")
    return fn(PolicyOutput(logprobs=torch.zeros_like(ent), entropy=ent), batch, Cfg(**cfg))


def _epo_batch(mask=None, turns=(0, 2), state=EPO_STATE, **extras):
    b = _batch([[1, 1, 1], [1, 1, 1]] if mask is None else mask, extras={"turn_ids": torch.as_tensor(turns), **extras})
    b.part_state = None if state is None else {k: list(v) if isinstance(v, list) else v for k, v in state.items()}
    return b


def test_epo_phase_weight():
    """w(e) = 1 - 0.2 (1 - exp(-2 e / 75)) up to h = 75, then 0.8 exp(-3 (e - 75) / 75), for E = 150:
    w(0) = 1, w(30) = 1 - 0.2 (1 - e^-0.8) = 0.889866, w(75) = 1 - 0.2 (1 - e^-2) = 0.827067,
    w(76) = 0.8 e^-0.04 = 0.768632, w(100) = 0.8 e^-1 = 0.294304, w(150) = 0.8 e^-3 = 0.039830
    (the spec's list); e is clamped to [0, E]."""
    from anypo.regularizers.epo import epo_phase_weight

    hand = [1.0, 1 - 0.2 * (1 - math.exp(-0.8)), 1 - 0.2 * (1 - math.exp(-2)), 0.8 * math.exp(-0.04)]
    hand += [0.8 * math.exp(-1), 0.8 * math.exp(-3)]
    got = [epo_phase_weight(e) for e in (0, 30, 75, 76, 100, 150)]
    assert got == pytest.approx(hand, abs=1e-12)
    assert got == pytest.approx([1.0, 0.889866, 0.827067, 0.768632, 0.294304, 0.03983], abs=1e-6)
    assert epo_phase_weight(-5) == 1.0 and epo_phase_weight(400) == pytest.approx(0.8 * math.exp(-3))


def test_epo_spec_example_code_smoothing():
    """Band (0.8 H_hist, 1.2 H_hist): turn 0 (0.76, 1.14), turn 2 (0.44, 0.66), strict inequalities.
    Sample 0: 0.90 inside, 1.30 above, 0.70 below; sample 1: 0.50 inside, 0.40 below, 0.66 not
    strictly inside. P = [[0, .1, .1], [0, .1, .1]]; agg(H) = 4.46 / 6 = 0.743333, agg(P) = 0.4 / 6 =
    0.066667; the loss is -c_H (agg(H) - c_s agg(P)) = -0.001 * 0.676667 = -0.00067667. P is a constant
    (the official code's torch.where of Python scalars): dL/dH = -c_H / 6 on every token, the entropy
    bonus's gradient alone."""
    ent = torch.tensor(EPO_H, dtype=F64, requires_grad=True)
    cfg = {"min_ratio": 0.8, "max_ratio": 1.2, "penalty": 0.1, "phase_weights": False, "smooth_from_turn": 0}
    out = _epo(ent, _epo_batch(), **cfg)
    assert float(out.loss.detach()) == pytest.approx(-0.001 * (4.46 / 6 - 0.4 / 6), abs=1e-15)
    assert float(out.loss.detach()) == pytest.approx(-0.00067667, abs=1e-8)
    assert out.metrics["policy/entropy"] == pytest.approx(0.743333, abs=1e-6)
    assert out.metrics["epo/penalty"] == pytest.approx(0.066667, abs=1e-6)
    assert out.metrics["epo/out_of_band_frac"] == pytest.approx(4 / 6)
    assert out.metrics["epo/history_entropy"] == pytest.approx((3 * 0.95 + 3 * 0.55) / 6)
    out.loss.backward()
    torch.testing.assert_close(ent.grad, torch.full((2, 3), -0.001 / 6, dtype=F64), rtol=0, atol=1e-15)


def test_epo_phase_weight_scales_the_penalty():
    """At e = updates = 30 the penalty is multiplied by w(30) = 0.889866: agg(P) = 0.889866 * 0.4 / 6."""
    ent = torch.tensor(EPO_H, dtype=F64)
    state = {**EPO_STATE, "updates": 30}
    out = _epo(ent, _epo_batch(state=state), min_ratio=0.8, max_ratio=1.2, smooth_from_turn=0)
    w = 1 - 0.2 * (1 - math.exp(-0.8))
    assert out.metrics["epo/penalty"] == pytest.approx(w * 0.4 / 6, abs=1e-12)
    assert out.metrics["epo/phase_weight"] == pytest.approx(w)


def test_epo_hinge_smoothing_value_and_gradient():
    """smoothing="hinge" (our differentiable variant): P = 0.1 (relu(lo - H) + relu(H - hi)). With H =
    [[0.90, 1.30, 0.70], [0.50, 0.40, 0.70]] and the bands above: P = 0.1 * [[0, 0.16, 0.06],
    [0, 0.04, 0.04]], agg(P) = 0.03 / 6. dL/dH = -c_H / 6 + c_H c_s 0.1 sign / 6 with sign +1 above the
    band (1.30 and 0.70 of sample 1), -1 below (0.70 of sample 0, 0.40), 0 inside."""
    H = [[0.90, 1.30, 0.70], [0.50, 0.40, 0.70]]
    ent = torch.tensor(H, dtype=F64, requires_grad=True)
    cfg = {"min_ratio": 0.8, "max_ratio": 1.2, "phase_weights": False, "smooth_from_turn": 0, "smoothing": "hinge"}
    out = _epo(ent, _epo_batch(), **cfg)
    pen = 0.1 * (0.16 + 0.06 + 0.04 + 0.04) / 6
    assert out.metrics["epo/penalty"] == pytest.approx(pen, abs=1e-12)
    assert float(out.loss.detach()) == pytest.approx(-0.001 * (sum(map(sum, H)) / 6 - pen), abs=1e-15)
    out.loss.backward()
    sign = torch.tensor([[0, 1, -1], [0, -1, 1]], dtype=F64)
    torch.testing.assert_close(ent.grad, -0.001 / 6 + 0.001 * 0.1 * sign / 6, rtol=0, atol=1e-15)


def test_epo_without_history_is_the_entropy_bonus():
    """No state (the first step, or a loop that hands none over) or an empty history: no smoothing,
    L = -c_H agg(H) = -0.001 * 4.46 / 6, whatever the band."""
    ent = torch.tensor(EPO_H, dtype=F64)
    for state in (None, {"turn_entropy_sum": [], "turn_count": [], "updates": 3}):
        out = _epo(ent, _epo_batch(state=state), min_ratio=0.8, max_ratio=1.2, smooth_from_turn=0)
        assert float(out.loss) == pytest.approx(-0.001 * 4.46 / 6, abs=1e-15) and out.metrics["epo/penalty"] == 0


def test_epo_smooths_only_late_turns_and_known_turns():
    """smooth_from_turn=1: sample 0 (turn 0) is not smoothed, sample 1 (turn 2) is: agg(P) = 0.2 / 6.
    A turn beyond the history (turn 5) gets no smoothing either."""
    ent = torch.tensor(EPO_H, dtype=F64)
    kw = {"min_ratio": 0.8, "max_ratio": 1.2, "phase_weights": False}
    out = _epo(ent, _epo_batch(), smooth_from_turn=1, **kw)
    assert out.metrics["epo/penalty"] == pytest.approx(0.2 / 6, abs=1e-12)
    out = _epo(ent, _epo_batch(turns=(5, 2)), smooth_from_turn=0, **kw)
    assert out.metrics["epo/penalty"] == pytest.approx(0.2 / 6, abs=1e-12)
    out = _epo(ent, _epo_batch(), **kw)  # the official gate: turn >= 25 only
    assert out.metrics["epo/penalty"] == 0


def test_epo_seq_mode():
    """mask_mode="seq": each response's mean entropy against its band. Sample 0: mean 2.9 / 3 = 0.9667 in
    (0.76, 1.14): P = 0; sample 1 (last token masked): mean 0.45 in (0.44, 0.66): P = 0. With
    max_ratio 1.0 the band of sample 0 is (0.76, 0.95): 0.9667 is above, P = 0.1 on its 3 tokens;
    agg(P) = 0.3 / 5 tokens."""
    ent = torch.tensor(EPO_H, dtype=F64)
    mask = [[1, 1, 1], [1, 1, 0]]
    kw = {"min_ratio": 0.8, "phase_weights": False, "smooth_from_turn": 0, "mask_mode": "seq"}
    assert _epo(ent, _epo_batch(mask=mask), max_ratio=1.2, **kw).metrics["epo/penalty"] == 0
    out = _epo(ent, _epo_batch(mask=mask), max_ratio=1.0, **kw)
    assert out.metrics["epo/penalty"] == pytest.approx(0.3 / 5, abs=1e-12)


def test_epo_history_update_from_metrics():
    """update_state adds each turn's token-mean entropy of the update: turn 0 (sample 0) 2.9 / 3, turn 2
    (sample 1) 1.56 / 3, read from the metrics as mass / share; turn 1 (never seen) keeps count 0. The
    history mean of turn 0 becomes (1.9 + 0.96667) / 3; the update counter moves to 1."""
    Cfg = get("regularizer", "epo")[1]
    cfg = Cfg(smooth_from_turn=0)
    batch = _epo_batch()
    out = _epo(torch.tensor(EPO_H, dtype=F64), batch, smooth_from_turn=0)
    assert out.metrics["epo/turn_token_share/0"] == pytest.approx(0.5)
    assert out.metrics["epo/turn_entropy_mass/2"] == pytest.approx(1.56 / 6)
    state = batch.part_state
    cfg.update_state(state, out.metrics)
    assert state["turn_count"] == [3, 2, 3] and state["updates"] == 1
    assert state["turn_entropy_sum"] == pytest.approx([1.9 + 2.9 / 3, 1.5, 1.1 + 1.56 / 3])
    fresh = cfg.init_state()
    cfg.update_state(fresh, out.metrics)
    assert fresh == {
        "turn_entropy_sum": [pytest.approx(2.9 / 3), 0.0, pytest.approx(0.52)],
        "turn_count": [1, 0, 1],
        "updates": 1,
    }


def test_epo_per_token_turn_ids_and_trimmed_microbatches():
    """turn_ids may be [N, T] (several turns in one row); a micro-batch trimmed on the right keeps the
    first T columns. Row 0 holds turns 0, 0, 2 and row 1 turn 2: with the band as above, tokens
    1.30 (turn 0) and 0.70 (turn 2, band (0.44, 0.66)), 0.40, 0.66 are outside: agg(P) = 0.4 / 6."""
    ent = torch.tensor(EPO_H, dtype=F64)
    turns = torch.tensor([[0, 0, 2, 9], [2, 2, 2, 9]])  # one column wider than the batch
    kw = {"min_ratio": 0.8, "max_ratio": 1.2, "phase_weights": False, "smooth_from_turn": 0}
    out = _epo(ent, _epo_batch(turns=turns), **kw)
    assert out.metrics["epo/penalty"] == pytest.approx(0.4 / 6, abs=1e-12)
    with pytest.raises(ValueError, match="turn_ids"):
        _epo(ent, _epo_batch(turns=(0, 1, 2)), **kw)


@pytest.mark.parametrize("smoothing", ["code", "hinge"])
@pytest.mark.parametrize("mask_mode", ["token", "seq"])
def test_epo_microbatches_sum_to_the_minibatch(smoothing, mask_mode):
    """With a history and per-sample turns, the losses of two micro-batches carrying the mini-batch's
    counts sum to the mini-batch's loss, and so do the gradients."""
    rng = np.random.default_rng(0)
    mask = np.ones((4, 5))
    mask[1, 3:] = mask[3, 1:] = 0
    ent = torch.tensor(rng.random((4, 5)) * 1.5, requires_grad=True)
    batch = _epo_batch(mask=mask, turns=(0, 2, 1, 0))
    kw = {"min_ratio": 0.8, "max_ratio": 1.2, "smooth_from_turn": 0, "smoothing": smoothing, "mask_mode": mask_mode}
    whole = _epo(ent, batch, **kw).loss
    (g_whole,) = torch.autograd.grad(whole, ent)
    total = 0
    for idx in ([0, 2], [1, 3]):
        micro = batch.select(torch.tensor(idx), loss_scale=batch.scale())
        total = total + _epo(ent[idx], micro, **kw).loss
    (g_micro,) = torch.autograd.grad(total, ent)
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g_micro, g_whole, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mask_mode", ["token", "seq"])
def test_epo_gradcheck(mask_mode):
    """float64 finite differences of the hinge-smoothed loss in the entropy (values off the band edges)."""
    ent = torch.tensor([[0.91, 1.31, 0.69], [0.52, 0.39, 0.71]], dtype=F64, requires_grad=True)
    kw = {"min_ratio": 0.8, "max_ratio": 1.2, "smooth_from_turn": 0, "smoothing": "hinge", "mask_mode": mask_mode}
    batch = _epo_batch(mask=[[1, 1, 1], [1, 1, 0]])
    assert torch.autograd.gradcheck(lambda e: _epo(e, batch, coef=0.5, **kw).loss, (ent,))


def test_epo_config_errors():
    Cfg = get("regularizer", "epo")[1]
    for bad, field in (
        ({"min_ratio": 1.5, "max_ratio": 1.2}, "min_ratio"),
        ({"mask_mode": "turn"}, "mask_mode"),
        ({"smoothing": "soft"}, "smoothing"),
        ({"penalty": -1.0}, "penalty"),
        ({"phase_steps": -1}, "phase_steps"),
    ):
        with pytest.raises(ValueError, match=field):
            Cfg(**bad)
    assert Cfg().stateful and not Cfg(smooth=False).stateful and Cfg().needs_entropy


# ---------------------------------------------------------------- shared numpy helpers


def _lsm(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ---------------------------------------------------------------- DCPO

# The spec's worked example (section 4): one group of 4 responses of 2 tokens, rewards [1, 0, 0, 1],
# logits Z of the behaviour policy over a 3-token vocabulary, sampled tokens y.
DCPO_R = np.array([1.0, 0, 0, 1])
DCPO_Z = np.array(
    [
        [[2.0, 0.5, -1.0], [0.0, 1.0, 0.2]],
        [[1.0, 1.0, 0.0], [3.0, 0.0, -2.0]],
        [[0.2, 0.1, 0.0], [1.5, -0.5, 0.5]],
        [[2.5, 0.0, 0.0], [0.3, 0.3, 0.3]],
    ]
)
DCPO_Y = np.array([[0, 1], [1, 0], [2, 0], [0, 2]])


def _tempered_np(t):
    """log softmax(Z / t) at the sampled tokens, by numpy."""
    return np.take_along_axis(_lsm(DCPO_Z / t), DCPO_Y[..., None], -1)[..., 0]


def _dcpo_batch(rewards=DCPO_R, state=None, temps=(1.2, 0.8, 1.0)):
    from anypo.advantages.dcpo import tempered_key

    b = _batch(np.ones((4, 2)), rewards=rewards, extras={tempered_key(t): torch.tensor(_tempered_np(t)) for t in temps})
    b.part_state = state
    return b


def _dcpo(batch, **cfg):
    fn, Cfg = get("advantage", "dcpo")
    return fn(batch, Cfg(**cfg))


def test_dcpo_spec_example():
    """H_prev = 0.30 <= H0 = 0.5: T = 1.2. A = (R - 0.5) / (std_unbiased 0.57735 + 1e-6) = +-0.866024;
    b = [1, 0, 0, 1], p = 0.5; a = min(0.2, 0.1) / 0.5 = 0.2, alpha = 0.2 / 1.2 = 1/6; rho =
    exp(lp^1.2 - lp^1) from the logits; A' = (5/6) A + (1/6) b rho = the spec's [[0.876702, 0.877162],
    [-0.721687, -0.721687], [-0.721687, -0.721687], [0.87703, 0.888353]]. The state then holds the
    batch's T = 1 NLL, -mean(lp^1), for the next step."""
    state = {"h_prev": 0.30}
    out = _dcpo(_dcpo_batch(state=state))
    A = (DCPO_R - 0.5) / (DCPO_R.std(ddof=1) + 1e-6)
    rho = np.exp(_tempered_np(1.2) - _tempered_np(1.0))
    alpha = 0.2 / 1.2
    want = (1 - alpha) * A[:, None] + alpha * DCPO_R[:, None] * rho
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-12)
    spec = [[0.876702, 0.877162], [-0.721687, -0.721687], [-0.721687, -0.721687], [0.87703, 0.888353]]
    np.testing.assert_allclose(out.numpy(), spec, atol=2e-6)
    np.testing.assert_allclose(rho[0], [0.930094, 0.932851], atol=1e-6)
    assert state["h_prev"] == pytest.approx(-_tempered_np(1.0).mean(), abs=1e-12)
    assert state["temperature"] == 1.2 and state["alpha"] == pytest.approx(alpha)


def test_dcpo_temperature_follows_the_entropy_statistic():
    """H_prev > H0 picks T = 0.8 (and asks the loop for 0.8 and 1.0); H_prev == H0 picks 1.2 (<=); the
    initial state (H_prev = 0) picks 1.2. With H_prev = 0.7: a = min(0.2, 0.1) / 0.5 = 0.2, alpha = 1/6, rho
    from T = 0.8."""
    Cfg = get("advantage", "dcpo")[1]
    cfg = Cfg()
    assert cfg.init_state() == {"h_prev": 0.0} and cfg.old_logprob_temperatures(cfg.init_state()) == (1.2, 1.0)
    assert cfg.old_logprob_temperatures({"h_prev": 0.7}) == (0.8, 1.0)
    assert cfg.temperature({"h_prev": 0.5}) == 1.2 and cfg.temperature(None) == 1.2
    out = _dcpo(_dcpo_batch(state={"h_prev": 0.7}))
    A = (DCPO_R - 0.5) / (DCPO_R.std(ddof=1) + 1e-6)
    a = min(0.2, 0.1) / 0.5
    alpha = a / (a + 1)
    rho = np.exp(_tempered_np(0.8) - _tempered_np(1.0))
    np.testing.assert_allclose(out.numpy(), (1 - alpha) * A[:, None] + alpha * DCPO_R[:, None] * rho, atol=1e-12)


def test_dcpo_without_successes_is_grpo():
    """No reward above 0.05 (p = 0; the official code divides by zero): the mix is skipped, A' = A, the
    GRPO z-score of [0, 0.04, 0.02, 0.01]."""
    R = np.array([0.0, 0.04, 0.02, 0.01])
    state = {"h_prev": 0.1}
    out = _dcpo(_dcpo_batch(rewards=R, state=state))
    A = (R - R.mean()) / (R.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(out.numpy(), np.repeat(A[:, None], 2, 1), atol=1e-12)
    assert state["alpha"] == 0.0


def test_dcpo_masks_and_missing_inputs():
    """Padding gets 0 whatever the extras hold there (-inf); a missing temperature names the key."""
    from anypo.advantages.dcpo import tempered_key

    b = _dcpo_batch()
    b.response_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=F64)
    b.extras[tempered_key(1.2)][1, 1] = float("-inf")
    out = _dcpo(b)
    assert torch.isfinite(out).all() and out[1, 1] == 0 and (out[3] == 0).all()
    with pytest.raises(ValueError, match="old_logprobs_at_T1.2"):
        _dcpo(_dcpo_batch(temps=(1.0,)))


def test_dcpo_gradient_through_the_policy_loss():
    """With A' in PPO clip on-policy (r = 1, no clipping active), dL/dlp = -A' / N_tok: the GRPO gradient
    scaled by 1 - alpha plus alpha b rho times the REINFORCE gradient. float64 gradcheck of that loss."""
    A = _dcpo(_dcpo_batch(state={"h_prev": 0.3}))
    fn, Cfg = get("policy_loss", "ppo_clip")
    old = torch.tensor(_tempered_np(1.0))
    b = _batch(np.ones((4, 2)), A.numpy(), old.numpy())
    lp = old.clone().requires_grad_(True)
    fn(PolicyOutput(logprobs=lp), b, Cfg(aggregation="token_mean")).loss.backward()
    torch.testing.assert_close(lp.grad, -A / 8, rtol=0, atol=1e-14)
    x = (old + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: fn(PolicyOutput(logprobs=y), b, Cfg(aggregation="token_mean")).loss, (x,))


def test_dcpo_config_errors():
    Cfg = get("advantage", "dcpo")[1]
    with pytest.raises(ValueError, match="temperature"):
        Cfg(temperature_low=0.0)
    with pytest.raises(ValueError, match="alpha_cap"):
        Cfg(alpha_cap=-0.1)
    assert Cfg().stateful and Cfg().needs_old_tempered_logprobs and Cfg().group_relative


# ---------------------------------------------------------------- Lp-Reg

# The spec's worked example (section 2): 4 tokens (one response position each), behaviour logits Z,
# sampled tokens y, all with A = -1; the current log-probs are the old ones shifted by d.
LP_Z = np.array([[2.0, 1.0, 0.0, -3.0], [1.0, 1.0, -0.5, -4.0], [3.0, 0.0, -1.0, -2.0], [0.5, 0.0, -0.2, -5.0]])
LP_Y = np.array([1, 2, 1, 3])
LP_D = np.array([-0.10, -0.30, -0.10, -0.20])


def _proxy_np(z, kappa, t=1.0, fixed=False):
    """numpy min-p proxy: keep p >= kappa max p (or p >= kappa) of softmax(z), -1e4 elsewhere, then
    log softmax(z' / t)."""
    p = np.exp(_lsm(z))
    keep = p >= (kappa if fixed else kappa * p.max(-1, keepdims=True))
    return _lsm(np.where(keep, z, -1e4) / t)


def test_minp_proxy_matches_numpy_and_the_spec():
    """kappa 0.02: row 3's token 3 (p = 0.0028 < 0.02 * 0.45) is filtered, lq = -10001.2434; the others are
    renormalised over the kept tokens: [-1.407606, -2.298916, -3.048587]. Fixed threshold and a
    temperature (filter on the raw logits, then divide) against numpy too."""
    from anypo.regularizers.lp_reg import minp_proxy_logprobs

    z, y = torch.tensor(LP_Z), torch.tensor(LP_Y)
    lq = minp_proxy_logprobs(z, y, 0.02)
    np.testing.assert_allclose(lq.numpy(), _proxy_np(LP_Z, 0.02)[np.arange(4), LP_Y], atol=1e-9)
    np.testing.assert_allclose(lq.numpy(), [-1.407606, -2.298916, -3.048587, -10001.2434], atol=1e-4)
    got = minp_proxy_logprobs(z, y, 0.05, filter="fixed", temperature=0.7)
    np.testing.assert_allclose(got.numpy(), _proxy_np(LP_Z, 0.05, 0.7, fixed=True)[np.arange(4), LP_Y], atol=1e-9)


def _lp_reg_inputs(frac=0.5):
    """The loop's side, done here by hand: select with lp_reg_select on the old log-probs and advantages,
    compute the proxy only at the selected positions."""
    from anypo.regularizers.lp_reg import PROXY_LOGPROBS, LpReg, lp_reg_select, minp_proxy_logprobs

    cfg = LpReg(neg_frac=frac)
    old = torch.tensor(_lsm(LP_Z)[np.arange(4), LP_Y])[:, None]  # [4, 1]
    adv = -torch.ones(4, 1, dtype=F64)
    sel = lp_reg_select(old, adv, torch.ones(4, 1), cfg)
    lq = torch.full((4, 1), float("nan"), dtype=F64)
    rows = sel[:, 0].nonzero().flatten()
    lq[rows, 0] = minp_proxy_logprobs(torch.tensor(LP_Z)[rows], torch.tensor(LP_Y)[rows], cfg.kappa).to(F64)
    batch = _batch(np.ones((4, 1)), adv.numpy(), old.numpy(), extras={PROXY_LOGPROBS: lq})
    return cfg, batch, old, sel


def test_lp_reg_spec_example_with_ppo_clip():
    """k = max(1, int(4 * 0.5)) = 2: the two lowest old log-probs are tokens 3 and 2. Token 3 is filtered
    (lq = -10001) so lp < lq fails: S = {2}. Per-token loss of ppo_clip (0.2 / 0.28) + lp_reg:
    token 0: r = e^-0.1 = 0.904837 inside the band; token 1: r = e^-0.3 = 0.740818 < 0.8, clipped to 0.8;
    token 2: 0.904837 + k3 with delta = lq - lp = 0.10 + (lq - lp_old) = 0.123585: e^delta - delta - 1 =
    0.007961 (the spec's snippet prints 0.912799 for this token, i.e. 0.007961; its prose says 0.007963);
    token 3: e^-0.2 = 0.818731. Token mean 0.859092 (the spec)."""
    cfg, batch, old, sel = _lp_reg_inputs()
    assert sel[:, 0].tolist() == [False, False, True, True]
    lp = (old + torch.tensor(LP_D)[:, None]).requires_grad_(True)
    fn_pg, PG = get("policy_loss", "ppo_clip")
    fn = get("regularizer", "lp_reg")[0]
    pg = fn_pg(PolicyOutput(logprobs=lp), batch, PG(eps_low=0.2, eps_high=0.28, aggregation="token_mean"))
    reg = fn(PolicyOutput(logprobs=lp), batch, cfg)
    delta = 0.10 + (_proxy_np(LP_Z, 0.02)[2, 1] - _lsm(LP_Z)[2, 1])  # lq - lp_old = -3.048587 + 3.072172
    k3 = math.exp(delta) - delta - 1
    assert k3 == pytest.approx(0.007961, abs=1e-6)
    per_token = [math.exp(-0.1), 0.8, math.exp(-0.1) + k3, math.exp(-0.2)]
    assert float((pg.loss + reg.loss).detach()) == pytest.approx(sum(per_token) / 4, abs=1e-6)
    assert float((pg.loss + reg.loss).detach()) == pytest.approx(0.859092, abs=1e-6)
    assert reg.metrics["lp_reg/selected_frac"] == 0.5 and reg.metrics["lp_reg/regularized_frac"] == 0.25
    reg.loss.backward()  # dk3/dlp = 1 - exp(delta) on token 2, over 4 tokens; 0 elsewhere
    want = torch.zeros(4, 1, dtype=F64)
    want[2, 0] = (1 - math.exp(float(batch.extras["lp_reg_proxy_logprobs"][2, 0] - lp[2, 0].detach()))) / 4
    torch.testing.assert_close(lp.grad, want, rtol=0, atol=1e-14)
    assert want[2, 0] < 0  # the likelihood is pushed up toward the proxy


def test_lp_reg_equals_the_official_loss_with_the_recipe_clip():
    """With PPOClip(eps_low=1.0, eps_high=9.0) (the recipe) the clipped term of an A < 0 token equals the
    unclipped -A r (max(r, 1 - 1.0) = r), so ppo_clip + lp_reg is the code's loss: sum over tokens of
    -A r, plus k3 on S, over 4 tokens."""
    cfg, batch, old, _ = _lp_reg_inputs()
    lp = old + torch.tensor(LP_D)[:, None] * 3  # ratios e^-0.3 .. e^-0.9, far below 0.8
    fn_pg, PG = get("policy_loss", "ppo_clip")
    pg = fn_pg(PolicyOutput(logprobs=lp), batch, PG(eps_low=1.0, eps_high=9.0, aggregation="token_mean")).loss
    reg = get("regularizer", "lp_reg")[0](PolicyOutput(logprobs=lp), batch, cfg).loss
    lq2 = float(batch.extras["lp_reg_proxy_logprobs"][2, 0])
    delta = lq2 - float(lp[2, 0])
    official = np.exp(3 * LP_D).sum() + (math.exp(delta) - delta - 1)
    assert float(pg + reg) == pytest.approx(official / 4, abs=1e-12)


def test_lp_reg_selection_rules():
    """k = max(1, int(n frac)) lowest among A < 0 (the code's strict k > 1: k = 1 selects nothing); ties go
    to the lower flat index; A > 0 tokens only with pos_frac; masked tokens never."""
    from anypo.regularizers.lp_reg import LpReg, lp_reg_select

    old = torch.tensor([[-1.0, -3.0, -3.0, -0.5], [-2.0, -4.0, -0.1, -9.0]], dtype=F64)
    adv = torch.tensor([[-1.0] * 4, [1.0] * 4], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    sel = lp_reg_select(old, adv, mask, LpReg(neg_frac=0.5))  # 4 negative tokens: k = 2, the two -3.0
    assert sel.tolist() == [[False, True, True, False], [False] * 4]
    assert not lp_reg_select(old, adv, mask, LpReg(neg_frac=0.3)).any()  # int(1.2) = 1: nothing
    sel = lp_reg_select(old, adv, mask, LpReg(neg_frac=0.0, pos_frac=0.7))  # 3 positive tokens: k = 2
    assert sel.tolist() == [[False] * 4, [True, True, False, False]]  # -9.0 is masked
    tie = lp_reg_select(torch.full((1, 5), -1.0), -torch.ones(1, 5), torch.ones(1, 5), LpReg(neg_frac=0.4))
    assert tie.tolist() == [[True, True, False, False, False]]


def test_lp_reg_k3_clamp_and_missing_inputs():
    """k3 is clamped at 10 (verl's low_var_kl): lq - lp = 5 gives e^5 - 6 = 142 -> 10, gradient 0. A
    missing proxy names the key; beta = 0 needs nothing and adds 0."""
    from anypo.regularizers.lp_reg import PROXY_LOGPROBS

    fn, Cfg = get("regularizer", "lp_reg")
    lp = torch.tensor([[-6.0, -1.0]], dtype=F64, requires_grad=True)
    batch = _batch(
        [[1, 1]], [[-1.0, -1.0]], [[-6.0, -1.0]], extras={PROXY_LOGPROBS: torch.tensor([[-1.0, float("nan")]])}
    )
    out = fn(PolicyOutput(logprobs=lp), batch, Cfg())
    assert float(out.loss.detach()) == pytest.approx(10.0 / 2)
    out.loss.backward()
    assert (lp.grad == 0).all()
    with pytest.raises(ValueError, match="lp_reg_proxy_logprobs"):
        fn(PolicyOutput(logprobs=lp), _batch([[1, 1]], [[-1.0, -1.0]], [[-6.0, -1.0]]), Cfg())
    assert not Cfg(beta=0.0).needs_old_proxy_logprobs
    assert float(fn(PolicyOutput(logprobs=lp), _batch([[1, 1]]), Cfg(beta=0.0)).loss.detach()) == 0.0


def test_lp_reg_gradcheck():
    """float64 finite differences in lp, several tokens in S (lp below lq, k3 below the clamp)."""
    from anypo.regularizers.lp_reg import PROXY_LOGPROBS

    rng = np.random.default_rng(5)
    old = -rng.random((3, 4)) * 3
    lq = np.where(rng.random((3, 4)) > 0.4, old + 0.5, np.nan)
    mask = np.ones((3, 4))
    mask[2, 3] = 0
    batch = _batch(mask, -np.ones((3, 4)), old, extras={PROXY_LOGPROBS: torch.tensor(lq)})
    fn, Cfg = get("regularizer", "lp_reg")
    lp = torch.tensor(old + rng.normal(0, 0.1, (3, 4)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fn(PolicyOutput(logprobs=x), batch, Cfg(beta=0.7)).loss, (lp,))


def test_lp_reg_config_errors():
    Cfg = get("regularizer", "lp_reg")[1]
    for bad, field in (({"kappa": 0.0}, "kappa"), ({"filter": "topk"}, "filter"), ({"neg_frac": 2.0}, "neg_frac")):
        with pytest.raises(ValueError, match=field):
            Cfg(**bad)
    assert Cfg().needs_old_proxy_logprobs and not Cfg().needs_logits
