"""SRPO's offline loss (``srpo``, kind ``preference_loss``) and the revision-prompt contract
(``anypo.losses.revision``): a hand-derived value and gradient on one pair, IPO as a special case, an
independent per-pair Python reference on 5 pairs, float64 gradcheck on all six policy inputs, the
micro-batch contract, masks, and clear errors.

Notation: ``h_w``, ``h_l`` the generator's log-ratios (plain prompt), ``g(t|y)`` the log-ratio of
response ``t`` after the revision prompt of ``y`` (``sum_t m (lp - ref)``), ``d = h_w - h_l``;
per pair ``m_l = beta (g(w|l) - g(l|l))``, ``m_w = beta (g(w|w) - g(l|w))``,
``z = beta (d + g(w|l) - g(l|w))`` and
``l = alpha [(m_l - 1/2)^2 + (m_w - 1/2)^2] + (1 - alpha) (z - 1)^2``; ``L = (1/P) sum_i l_i``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from anypo.losses.preference import IPO
from anypo.losses.revision import (
    DEFAULT_REVISION_TEMPLATE,
    SIDES,
    revision_key,
    revision_messages,
)
from anypo.losses.srpo import SRPO
from anypo.metrics import MetricAccumulator
from anypo.registry import get
from anypo.types import PolicyOutput, PreferenceBatch

F64 = torch.float64
COMBOS = [(t, g) for g in SIDES for t in SIDES]  # (target, given)


def _row(values: list[float], T: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.full((1, T), fill, dtype=F64)
    x[0, : len(values)] = torch.tensor(values, dtype=F64)
    m = torch.zeros(1, T, dtype=torch.long)
    m[0, : len(values)] = 1
    return x, m


def toy():
    """One pair: the spec's toy pair (h_w = 1, h_l = -0.5, d = 1.5; |y_w| = 4 in T = 6, |y_l| = 5 in
    T' = 7) and revision log-probs giving g(w|l) = 4 x 0.5 = 2, g(l|l) = 5 x (-0.2) = -1,
    g(w|w) = 4 x 0.125 = 0.5, g(l|w) = 5 x (-0.1) = -0.5. Padding: -inf (policy), nan (reference)."""
    lp_c, mc = _row([-2.0, -1.0, -3.0, -4.0], 6, float("-inf"))
    ref_c, _ = _row([-2.5, -1.5, -3.0, -4.0], 6, float("nan"))
    lp_r, mr = _row([-2.0, -3.0, -2.0, -4.0, -1.0], 7, float("-inf"))
    ref_r, _ = _row([-2.0, -2.5, -2.0, -4.0, -1.0], 7, float("nan"))
    rev = {  # (target, given): (policy per token, reference per token)
        ("chosen", "rejected"): ([-1.0] * 4, [-1.5] * 4),
        ("rejected", "rejected"): ([-2.0] * 5, [-1.8] * 5),
        ("chosen", "chosen"): ([-1.0] * 4, [-1.125] * 4),
        ("rejected", "chosen"): ([-2.0] * 5, [-1.9] * 5),
    }
    extras, policy = {}, {}
    for (t, g), (lp, ref) in rev.items():
        T = 6 if t == "chosen" else 7
        x, _ = _row(lp, T, float("-inf"))
        policy[(t, g)] = x.requires_grad_(True)
        extras[revision_key(t, g)] = policy[(t, g)]
        extras[revision_key(t, g, ref=True)] = _row(ref, T, float("nan"))[0]
    batch = PreferenceBatch(mc, mr, ref_c, ref_r, extras=extras)
    return batch, lp_c.requires_grad_(True), lp_r.requires_grad_(True), policy


def call(cfg: SRPO, batch, lp_c, lp_r):
    fn, _ = get("preference_loss", "srpo")
    return fn(PolicyOutput(logprobs=lp_c), PolicyOutput(logprobs=lp_r), batch, cfg)


def test_hand_value_and_gradient_on_toy_pair():
    """beta 0.1, alpha 0.8: m_l = 0.1 (2 + 1) = 0.3, m_w = 0.1 (0.5 + 0.5) = 0.1,
    z = 0.1 (1.5 + 2 + 0.5) = 0.4; l_SI = (0.3 - 0.5)^2 + (0.1 - 0.5)^2 = 0.04 + 0.16 = 0.2,
    l_G = (0.4 - 1)^2 = 0.36, l = 0.8 x 0.2 + 0.2 x 0.36 = 0.232.

    Gradients per response token (every token of a response enters its sum once):
    d l / d lp(y_w | x)   = (1 - a) 2 (z - 1) b = 0.2 x 2 x (-0.6) x 0.1 = -0.024, and +0.024 for y_l;
    d l / d lp(y_w | R(y_l)) = a 2 (m_l - 1/2) b + (1 - a) 2 (z - 1) b = -0.032 - 0.024 = -0.056;
    d l / d lp(y_l | R(y_l)) = -a 2 (m_l - 1/2) b = +0.032;
    d l / d lp(y_w | R(y_w)) = a 2 (m_w - 1/2) b = 0.8 x 2 x (-0.4) x 0.1 = -0.064;
    d l / d lp(y_l | R(y_w)) = +0.064 - (1 - a) 2 (z - 1) b = 0.064 + 0.024 = 0.088."""
    batch, lp_c, lp_r, pol = toy()
    out = call(SRPO(beta=0.1, alpha=0.8), batch, lp_c, lp_r)
    assert out.loss.item() == pytest.approx(0.232, abs=1e-12)
    m = out.metrics
    assert m["pref/loss_self_improvement"] == pytest.approx(0.2, abs=1e-12)
    assert m["pref/loss_generative"] == pytest.approx(0.36, abs=1e-12)
    assert m["pref/revision_margin_given_rejected"] == pytest.approx(0.3, abs=1e-12)
    assert m["pref/revision_margin_given_chosen"] == pytest.approx(0.1, abs=1e-12)
    assert m["pref/revision_accuracy"] == 1.0
    assert m["pref/reward_margin"] == pytest.approx(0.15, abs=1e-12)  # beta d, as every preference loss
    inputs = [lp_c, lp_r, *(pol[c] for c in COMBOS)]
    grads = torch.autograd.grad(out.loss, inputs)
    expected = {
        0: -0.024,
        1: 0.024,
        2: -0.064,  # (chosen, chosen)
        3: 0.088,  # (rejected, chosen)
        4: -0.056,  # (chosen, rejected)
        5: 0.032,  # (rejected, rejected)
    }
    for k, gr in enumerate(grads):
        n = 4 if k in (0, 2, 4) else 5
        assert torch.allclose(gr[0, :n], torch.full((n,), expected[k], dtype=F64), atol=1e-12), k
        assert (gr[0, n:] == 0).all(), k  # padding: exactly zero
    for key in ("pref/loss", "pref/loss_self_improvement", "pref/loss_generative"):
        assert out.reduction(key) == "sum"
    for key in ("pref/revision_margin_given_rejected", "pref/revision_margin_given_chosen", "pref/revision_accuracy"):
        assert out.reduction(key) == "seq_mean"


def test_alpha_zero_without_revision_change_is_ipo_with_tau_beta_over_2():
    """With the self-improver at its reference (every g = 0) and alpha = 0, l = (beta d - 1)^2
    = beta^2 (d - 1/beta)^2 = beta^2 x IPO(tau = beta / 2, unnormalised); on the toy pair
    (0.15 - 1)^2 = 0.7225 and IPO's (1.5 - 10)^2 = 72.25."""
    batch, lp_c, lp_r, pol = toy()
    for t, g in COMBOS:  # policy = reference after the revision prompts
        batch.extras[revision_key(t, g)] = batch.extras[revision_key(t, g, ref=True)].nan_to_num(0.0)
    out = call(SRPO(beta=0.1, alpha=0.0), batch, lp_c, lp_r)
    assert out.loss.item() == pytest.approx(0.7225, abs=1e-12)
    fn, _ = get("preference_loss", "ipo")
    ipo = fn(PolicyOutput(logprobs=lp_c), PolicyOutput(logprobs=lp_r), batch, IPO(beta=0.05, length_normalize=False))
    assert ipo.loss.item() == pytest.approx(72.25, abs=1e-9)
    assert out.loss.item() == pytest.approx(0.01 * ipo.loss.item(), abs=1e-12)


def test_alpha_one_ignores_the_generator():
    """alpha = 1: only the self-improvement terms, so the plain-prompt log-probs get no gradient."""
    batch, lp_c, lp_r, _ = toy()
    out = call(SRPO(beta=0.1, alpha=1.0), batch, lp_c, lp_r)
    assert out.loss.item() == pytest.approx(0.2, abs=1e-12)
    g_c, g_r = torch.autograd.grad(out.loss, (lp_c, lp_r))
    assert (g_c == 0).all() and (g_r == 0).all()


# ---------------------------------------------------------------------------------------------
# 5 pairs: an independent per-pair reference, gradcheck, micro-batches, masks
# ---------------------------------------------------------------------------------------------

N, TC, TR = 5, 6, 4
MASK = {
    "chosen": np.array(
        [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    ),
    "rejected": np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]),
}  # a hole in chosen row 2, an empty rejected row 4
NAMES = ["lp_c", "lp_r", *(f"rev_{t}_{g}" for t, g in COMBOS)]


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, side in (("c", "chosen"), ("r", "rejected")):
        shape = MASK[side].shape
        out[f"lp_{name}"], out[f"ref_{name}"] = rng.normal(-1.5, 0.5, shape), rng.normal(-1.5, 0.5, shape)
    for t, g in COMBOS:
        shape = MASK[t].shape
        out[f"rev_{t}_{g}"], out[f"refrev_{t}_{g}"] = rng.normal(-1.5, 0.5, shape), rng.normal(-1.5, 0.5, shape)
    return out


def make_batch(a: dict[str, np.ndarray], garbage: float | None = float("nan")):
    """Tensors of ``a``; padding holds -inf (policy) and ``garbage`` (reference), or stays finite
    (``garbage=None``, for finite differences). Returns the batch and the six policy tensors."""

    def t(x, side, fill):
        x = torch.tensor(x, dtype=F64)
        return x if fill is None else x.masked_fill(torch.tensor(MASK[side]) == 0, fill)

    pad = None if garbage is None else float("-inf")
    pol = {"lp_c": t(a["lp_c"], "chosen", pad), "lp_r": t(a["lp_r"], "rejected", pad)}
    extras = {}
    for tg, g in COMBOS:
        pol[f"rev_{tg}_{g}"] = t(a[f"rev_{tg}_{g}"], tg, pad)
        extras[revision_key(tg, g, ref=True)] = t(a[f"refrev_{tg}_{g}"], tg, garbage)
    batch = PreferenceBatch(
        chosen_mask=torch.tensor(MASK["chosen"]),
        rejected_mask=torch.tensor(MASK["rejected"]).bool(),
        ref_chosen_logprobs=t(a["ref_c"], "chosen", garbage),
        ref_rejected_logprobs=t(a["ref_r"], "rejected", garbage),
        extras=extras,
    )
    for v in pol.values():
        v.requires_grad_(True)
    return batch, pol


def run(cfg: SRPO, batch: PreferenceBatch, pol: dict[str, torch.Tensor]):
    b = dataclasses.replace(batch, extras=dict(batch.extras))
    for t, g in COMBOS:
        b.extras[revision_key(t, g)] = pol[f"rev_{t}_{g}"]
    return call(cfg, b, pol["lp_c"], pol["lp_r"])


def python_reference(cfg: SRPO, a: dict[str, np.ndarray]) -> float:
    """Pair by pair in Python floats, from the formula in the module docstring."""
    total = 0.0
    for i in range(N):

        def s(x, side, i=i):
            return float(x[i][MASK[side][i] == 1].sum())

        h_w = s(a["lp_c"], "chosen") - s(a["ref_c"], "chosen")
        h_l = s(a["lp_r"], "rejected") - s(a["ref_r"], "rejected")
        gr = {(t, g): s(a[f"rev_{t}_{g}"], t) - s(a[f"refrev_{t}_{g}"], t) for t, g in COMBOS}
        b = cfg.beta
        m_l = b * (gr[("chosen", "rejected")] - gr[("rejected", "rejected")])
        m_w = b * (gr[("chosen", "chosen")] - gr[("rejected", "chosen")])
        z = b * (h_w - h_l + gr[("chosen", "rejected")] - gr[("rejected", "chosen")])
        total += cfg.alpha * ((m_l - 0.5) ** 2 + (m_w - 0.5) ** 2) + (1 - cfg.alpha) * (z - 1) ** 2
    return total / N


CFGS = [SRPO(), SRPO(beta=0.5, alpha=0.3), SRPO(beta=2.0, alpha=0.0), SRPO(beta=0.05, alpha=1.0)]


@pytest.mark.parametrize("cfg", CFGS, ids=range(len(CFGS)))
def test_matches_python_reference(cfg):
    a = arrays()
    batch, pol = make_batch(a)
    assert run(cfg, batch, pol).loss.item() == pytest.approx(python_reference(cfg, a), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("cfg", CFGS, ids=range(len(CFGS)))
def test_gradcheck(cfg):
    """torch.autograd.gradcheck (float64 central differences) on the six policy inputs at once."""
    batch, pol = make_batch(arrays(seed=1), garbage=None)

    def f(*xs):
        return run(cfg, batch, dict(zip(NAMES, xs, strict=True))).loss

    assert torch.autograd.gradcheck(f, tuple(pol[n] for n in NAMES), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_microbatch_contract():
    """Micro-batches of 2 + 1 + 2 pairs carrying the global pair count: losses and gradients add up
    to the whole batch's, and the metrics combined by their reductions equal the whole batch's."""
    cfg = SRPO(beta=0.5, alpha=0.3)
    batch, pol = make_batch(arrays())
    whole = run(cfg, batch, pol)
    g_whole = torch.autograd.grad(whole.loss, [pol[n] for n in NAMES])
    total, acc = 0.0, MetricAccumulator()
    for idx in ([0, 3], [4], [1, 2]):
        sub = PreferenceBatch(
            batch.chosen_mask[idx],
            batch.rejected_mask[idx],
            batch.ref_chosen_logprobs[idx],
            batch.ref_rejected_logprobs[idx],
            extras={k: v[idx] for k, v in batch.extras.items()},
            num_pairs=float(N),
        )
        out = run(cfg, sub, {n: pol[n][idx] for n in NAMES})
        total = total + out.loss
        for k, v in out.metrics.items():
            acc.add(k, v, out.reduction(k), token_share=float("nan"), seq_share=len(idx) / N)
    assert total.item() == pytest.approx(whole.loss.item(), rel=1e-12, abs=1e-12)
    for a, b in zip(torch.autograd.grad(total, [pol[n] for n in NAMES]), g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    combined = acc.result()
    assert combined.keys() == whole.metrics.keys()
    for k, v in whole.metrics.items():
        assert combined[k] == pytest.approx(v, rel=1e-10, abs=1e-12), k


def test_masks_respected():
    """Padding holding -inf (policy) and nan / inf / 7 (reference) gives the same finite loss and
    exactly zero gradient on every padded position of all six inputs."""
    losses = []
    for garbage in (float("nan"), float("inf"), 7.0):
        batch, pol = make_batch(arrays(), garbage=garbage)
        out = run(SRPO(), batch, pol)
        grads = torch.autograd.grad(out.loss, [pol[n] for n in NAMES])
        for name, gr in zip(NAMES, grads, strict=True):
            side = "chosen" if name in ("lp_c", "rev_chosen_chosen", "rev_chosen_rejected") else "rejected"
            assert torch.isfinite(gr).all() and (gr[torch.tensor(MASK[side]) == 0] == 0).all(), name
        losses.append(out.loss.item())
    assert losses[0] == losses[1] == losses[2]


# ---------------------------------------------------------------------------------------------
# Errors, config, the revision prompt
# ---------------------------------------------------------------------------------------------


def test_missing_revision_logprobs_name_the_need():
    batch, lp_c, lp_r, _ = toy()
    del batch.extras[revision_key("rejected", "chosen", ref=True)]
    with pytest.raises(ValueError, match=r"ref_revision_rejected_given_chosen.*needs_revision_logprobs"):
        call(SRPO(), batch, lp_c, lp_r)
    batch, lp_c, lp_r, _ = toy()
    batch.extras[revision_key("chosen", "chosen")] = torch.zeros(1, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"revision_chosen_given_chosen.*shape \(1, 5\).*chosen_mask \(1, 6\)"):
        call(SRPO(), batch, lp_c, lp_r)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"alpha": 1.5}, r"SRPO\.alpha must be in \[0, 1\]"),
        ({"alpha": float("nan")}, r"SRPO\.alpha"),
        ({"beta": 0.0}, r"SRPO\.beta must be a positive"),
        ({"revision_template": "Improve: {prompt}"}, r"SRPO\.revision_template must contain \{response\}"),
        ({"revision_template": "{prompt} {response} {other}"}, r"SRPO\.revision_template has a placeholder other"),
    ],
)
def test_bad_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        SRPO(**kw)


def test_needs():
    cfg = SRPO()
    assert cfg.needs_ref_logprobs and cfg.needs_revision_logprobs
    assert (cfg.beta, cfg.alpha, cfg.revision_template) == (0.1, 0.8, DEFAULT_REVISION_TEMPLATE)


def test_revision_messages_rewrite_only_the_last_user_message():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    out = revision_messages(msgs, "5", "Q: {prompt}\nA: {response}\nBetter:")
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: What is 2 + 2?\nA: 5\nBetter:"},
    ]
    assert msgs[1]["content"] == "What is 2 + 2?"  # the input is not modified
    # braces inside the question or the answer are text, not placeholders
    assert (
        revision_messages([{"role": "user", "content": "{x}"}], "{y}", "{prompt}|{response}")[0]["content"] == "{x}|{y}"
    )
    with pytest.raises(ValueError, match="needs a user message"):
        revision_messages([{"role": "system", "content": "s"}], "y", DEFAULT_REVISION_TEMPLATE)


def test_weighted_combination_forwards_the_need_and_the_template():
    """weighted((SRPO, 1), (sft seq_sum, 0.1)) declares needs_revision_logprobs and SRPO's template, so
    the loop supplies the revision inputs; on the toy pair its loss is 0.232 + 0.1 x 10 = 1.232 (the
    chosen response's NLL is -(-2 - 1 - 3 - 4) = 10)."""
    from anypo.losses.preference import ChosenNLL, WeightedPreference

    tmpl = "{response} <- improve -> {prompt}"
    cfg = WeightedPreference(terms=((SRPO(revision_template=tmpl), 1.0), (ChosenNLL(reduction="seq_sum"), 0.1)))
    assert cfg.needs_revision_logprobs and cfg.revision_template == tmpl and cfg.needs_ref_logprobs
    plain = WeightedPreference()
    assert not plain.needs_revision_logprobs and plain.revision_template is None
    batch, lp_c, lp_r, _ = toy()
    fn, _ = get("preference_loss", "weighted")
    out = fn(PolicyOutput(logprobs=lp_c), PolicyOutput(logprobs=lp_r), batch, cfg)
    assert out.loss.item() == pytest.approx(1.232, abs=1e-12)
    assert out.metrics["pref/loss_srpo"] == pytest.approx(0.232, abs=1e-12)
