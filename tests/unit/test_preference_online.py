"""The online preference methods' parts: the sppo and xpo losses, the pair selection from a preference
matrix, and the mixed (INPO / APO) references. Expected values are the spec's test vectors
(shared/papers/preference-selfplay-agentic.md sections 2, 6, 8, 9) or derived by hand in each docstring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anypo.losses.preference import DPO, IPO
from anypo.losses.preference_online import SPPO, XPO
from anypo.registry import get
from anypo.train_pref_online import mix_reference, select_pair
from anypo.types import PolicyOutput, PreferenceBatch


def one_pair(pol_w, pol_l, ref_w, ref_l, extras=None, dtype=torch.float64):
    """One pair whose responses are single tokens holding the sequence log-probs (sums are the same)."""
    lp_c = torch.tensor([[pol_w]], dtype=dtype, requires_grad=True)
    lp_r = torch.tensor([[pol_l]], dtype=dtype, requires_grad=True)
    batch = PreferenceBatch(
        chosen_mask=torch.ones(1, 1), rejected_mask=torch.ones(1, 1),
        ref_chosen_logprobs=torch.tensor([[ref_w]], dtype=dtype), ref_rejected_logprobs=torch.tensor([[ref_l]], dtype=dtype),
        extras={k: torch.tensor([v], dtype=dtype) for k, v in (extras or {}).items()},
    )  # fmt: skip
    return PolicyOutput(logprobs=lp_c), PolicyOutput(logprobs=lp_r), batch


def spec_sppo_probs():
    """Spec section 2: PairRM scores s, P_ij = sigmoid(s_i - s_j); w = argmax s = 3, l = argmin s = 4,
    p_w = mean_j P_wj (self included), p_l likewise, p_wl = P_wl (numpy, independent of the code)."""
    s = np.array([1.2, -0.3, 0.5, 2.0, -1.0])
    P = 1 / (1 + np.exp(s[None, :] - s[:, None]))
    w, lo = int(s.argmax()), int(s.argmin())
    return P, w, lo, P[w].mean(), P[lo].mean(), P[w, lo]


@pytest.mark.parametrize(
    ("beta", "sppo_v", "single_v"), [(0.1, 3.880361, 14.318722), (0.001, 72912.436617, 204145.104079)]
)
def test_sppo_spec_vectors(beta, sppo_v, single_v):
    """h_w = 1, h_l = -0.5 against pi_t; spec: sppo = 1/2[(h_w - (p_w - 1/2)/beta)^2 + (h_l - (p_l - 1/2)/beta)^2]
    = 3.880361 (beta 0.1) / 72912.436617 (beta 0.001); sppo_single with P_wl: 14.318722 / 204145.104079."""
    _, _, _, p_w, p_l, p_wl = spec_sppo_probs()
    assert (round(p_w, 6), round(p_l, 6), round(p_wl, 6)) == (0.7738, 0.232283, 0.952574)
    fn = get("preference_loss", "sppo")[0]
    ex = {"winrate_chosen": p_w, "winrate_rejected": p_l, "pair_prob": p_wl}
    out = fn(*one_pair(-10.0, -12.0, -11.0, -11.5, ex), SPPO(beta=beta))
    assert out.loss.item() == pytest.approx(sppo_v, rel=1e-6)
    out = fn(*one_pair(-10.0, -12.0, -11.0, -11.5, ex), SPPO(beta=beta, targets="pair"))
    assert out.loss.item() == pytest.approx(single_v, rel=1e-6)


def test_sppo_in_float32_keeps_large_targets():
    """Spec section 16.3: targets of size 1/beta = 1000 in float32: the beta 0.001 value to float32 precision."""
    _, _, _, p_w, p_l, _ = spec_sppo_probs()
    ex = {"winrate_chosen": p_w, "winrate_rejected": p_l}
    out = get("preference_loss", "sppo")[0](*one_pair(-10.0, -12.0, -11.0, -11.5, ex, torch.float32), SPPO())
    assert out.loss.dtype == torch.float32 and out.loss.item() == pytest.approx(72912.436617, rel=1e-5)


def test_xpo_by_hand():
    """DPO part: h_w = -10 - (-11) = 1, h_l = -12 - (-11.5) = -0.5, -logsig(0.1 * 1.5) = 0.620957 (spec
    section 1). Exploration term alpha log pi(y~): with the rejected response the reference sample,
    1e-5 * (-12) -> 0.620957 - 0.00012 = 0.620837; with the chosen one 1e-5 * (-10) -> 0.620857;
    spec section 9's arithmetic: 0.620957 + 1e-5 * (-20) = 0.620757 (a reference sample with log pi -20).
    IPO base (unnormalised): (1.5 - 5)^2 = 12.25, plus -0.00012."""
    fn = get("preference_loss", "xpo")[0]
    dpo = -math.log(1 / (1 + math.exp(-0.15)))
    assert dpo == pytest.approx(0.620957, abs=1e-6)
    rej = {"ref_sample_chosen": 0.0, "ref_sample_rejected": 1.0}
    out = fn(*one_pair(-10.0, -12.0, -11.0, -11.5, rej), XPO())
    assert out.loss.item() == pytest.approx(dpo - 1.2e-4, abs=1e-9)
    assert out.metrics["pref/xpo_bonus"] == pytest.approx(-1.2e-4)
    cho = {"ref_sample_chosen": 1.0, "ref_sample_rejected": 0.0}
    assert fn(*one_pair(-10.0, -12.0, -11.0, -11.5, cho), XPO()).loss.item() == pytest.approx(dpo - 1e-4, abs=1e-9)
    spec = fn(*one_pair(-20.0, -12.0, -21.0, -11.5, cho), XPO())  # same margin, y~ with log pi = -20
    assert spec.loss.item() == pytest.approx(0.620757, abs=1e-6)
    ipo = fn(*one_pair(-10.0, -12.0, -11.0, -11.5, rej), XPO(beta=0.1, base="ipo"))
    assert ipo.loss.item() == pytest.approx(12.25 - 1.2e-4, abs=1e-9)


def test_inpo_spec_vector_through_the_mixed_reference():
    """Spec section 6 (eta = 2, tau = 0.1, eta tau = 0.2): the reference column 0.2 log pi_ref + 0.8 log pi_t
    gives h = (-10 - -12) - 0.2 (-11 - -11.5) - 0.8 (-10.5 - -11.8) = 2 - 0.1 - 1.04 = 0.86, and the IPO
    loss with tau_IPO = 1/eta (target eta/2 = 1), unnormalised: (0.86 - 1)^2 = 0.0196."""
    ref_w = mix_reference([(0.2, torch.tensor([-11.0])), (0.8, torch.tensor([-10.5]))])
    ref_l = mix_reference([(0.2, torch.tensor([-11.5])), (0.8, torch.tensor([-11.8]))])
    fn = get("preference_loss", "ipo")[0]
    out = fn(*one_pair(-10.0, -12.0, ref_w.item(), ref_l.item()), IPO(beta=0.5, length_normalize=False))
    assert out.loss.item() == pytest.approx(0.0196, abs=1e-6)


def test_apo_spec_vector_through_the_extrapolated_reference():
    """Spec section 8 (alpha 0.3): reference log-ratio (1 + alpha)(-10 - -12) - alpha(-10.5 - -11.8) = 2.6 - 0.39
    = 2.21 from the column 1.3 log pi^_t - 0.3 log pi^_{t-1}; next-iteration policy (-9.5, -12.5): margin
    3 - 2.21 = 0.79, DPO -logsig(0.079) = 0.654427."""
    ref_w = mix_reference([(1.3, torch.tensor([-10.0])), (-0.3, torch.tensor([-10.5]))])
    ref_l = mix_reference([(1.3, torch.tensor([-12.0])), (-0.3, torch.tensor([-11.8]))])
    assert (ref_w - ref_l).item() == pytest.approx(2.21, abs=1e-5)
    out = get("preference_loss", "dpo")[0](*one_pair(-9.5, -12.5, ref_w.item(), ref_l.item()), DPO(beta=0.1))
    assert out.loss.item() == pytest.approx(0.654427, abs=1e-5)


@pytest.mark.parametrize("name", ["sppo", "xpo"])
def test_gradcheck(name):
    """Finite differences in float64 over a 3-pair batch with padding."""
    torch.manual_seed(0)
    fn, Cfg = get("preference_loss", name)
    cfg = Cfg(beta=0.5) if name == "sppo" else Cfg(alpha=0.3)
    mc = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float64)
    mr = torch.tensor([[1, 1], [1, 1], [1, 0]], dtype=torch.float64)
    extras = {k: torch.rand(3, dtype=torch.float64) for k in cfg.needs_pair_extras}
    batch = PreferenceBatch(chosen_mask=mc, rejected_mask=mr, ref_chosen_logprobs=-torch.rand(3, 3, dtype=torch.float64),
                            ref_rejected_logprobs=-torch.rand(3, 2, dtype=torch.float64), extras=extras)  # fmt: skip
    lc, lr = -torch.rand(3, 3, dtype=torch.float64), -torch.rand(3, 2, dtype=torch.float64)
    f = lambda a, b: fn(PolicyOutput(logprobs=a), PolicyOutput(logprobs=b), batch, cfg).loss
    assert torch.autograd.gradcheck(f, (lc.requires_grad_(), lr.requires_grad_()))


@pytest.mark.parametrize("name", ["sppo", "xpo"])
def test_microbatches_sum_to_the_batch(name):
    """With num_pairs = 4 the losses of pairs {0, 1} and {2, 3} add up to the loss of all 4."""
    torch.manual_seed(1)
    fn, Cfg = get("preference_loss", name)
    cfg = Cfg()
    m = torch.ones(4, 3)
    lc, lr, rc, rr = (-torch.rand(4, 3, dtype=torch.float64) for _ in range(4))
    ex = {k: torch.rand(4, dtype=torch.float64).round() for k in cfg.needs_pair_extras}

    def loss(sl, P=None):
        b = PreferenceBatch(m[sl], m[sl], rc[sl], rr[sl], {k: v[sl] for k, v in ex.items()}, num_pairs=P)
        return fn(PolicyOutput(logprobs=lc[sl]), PolicyOutput(logprobs=lr[sl]), b, cfg).loss

    whole = loss(slice(0, 4))
    assert (loss(slice(0, 2), 4.0) + loss(slice(2, 4), 4.0)).item() == pytest.approx(whole.item(), rel=1e-12)


def test_missing_extras_and_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match=r"extras\['winrate_chosen'\] is missing"):
        get("preference_loss", "sppo")[0](*one_pair(-1.0, -2.0, -1.0, -2.0), SPPO())
    with pytest.raises(ValueError, match="SPPO.targets"):
        SPPO(targets="hard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="XPO.alpha"):
        XPO(alpha=-1.0)
    with pytest.raises(ValueError, match="XPO.base"):
        XPO(base="hinge")  # type: ignore[arg-type]


def test_select_pair_on_the_spec_matrix():
    """Spec section 2's matrix: best = 3, worst = 4, with their win rates p_w, p_l (self included)
    and P_wl, as the SPPO code computes them."""
    P, w, lo, p_w, p_l, p_wl = spec_sppo_probs()
    sel, why = select_pair(torch.tensor(P))
    assert why == "ok" and (sel.chosen, sel.rejected) == (w, lo) == (3, 4)
    assert (sel.winrate_chosen, sel.winrate_rejected, sel.pair_prob) == pytest.approx((p_w, p_l, p_wl))


def test_select_pair_ties_and_unjudged():
    """All equal (rock-paper-scissors: each wins 1/2 on average) -> tied. Two samples, 0 beats 1 with
    P = 0.8: win rates (0.5 + 0.8)/2 = 0.65 and 0.35. A NaN entry drops the sample with the most NaNs:
    sample 2 unjudged against both others -> the pair comes from 0 and 1; only NaNs -> unjudged."""
    rps = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]], dtype=torch.float64)
    assert select_pair(rps) == (None, "tied")
    sel, _ = select_pair(torch.tensor([[0.5, 0.8], [0.2, 0.5]], dtype=torch.float64))
    assert (sel.chosen, sel.rejected, sel.winrate_chosen, sel.winrate_rejected) == (0, 1, 0.65, 0.35)
    nan = math.nan
    P = torch.tensor([[0.5, 0.2, nan], [0.8, 0.5, nan], [nan, nan, 0.5]], dtype=torch.float64)
    sel, why = select_pair(P)
    assert why == "ok" and (sel.chosen, sel.rejected, sel.pair_prob) == (1, 0, 0.8)
    assert select_pair(torch.tensor([[0.5, nan], [nan, 0.5]], dtype=torch.float64)) == (None, "unjudged")
