"""anypo.optim.AdamW8bit and the --optimizer choice.

Expected values are derived by hand or computed in float64 by reference code written here from the
codebook's definition (anypo/optim.py's module docstring), never by the code under test:

    v: code 0 = 0; code k = 1..255 = a * 2^(-24 (255 - k) / 254)        (a: the block's absmax)
    m: top bit = sign; j = code & 127; j = 0 is 0; j = 1..127 = a * 2^(-16 (127 - j) / 126)
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from anypo import checkpoint, cli
from anypo.config import DistConfig, TrainConfig
from anypo.models import ModelConfig
from anypo.optim import BLOCK, AdamW8bit, dequantize, quantize
from anypo.trainer_setup import make_optimizer
from anypo.validate import train_config_problems

V_BOUND = 2 ** (24 / 508) - 1
"""Largest relative error of a decoded v inside its range (test_relative_error_is_bounded)."""
M_BOUND = 2 ** (16 / 252) - 1
"""The same for |m|."""
SLACK = 1e-5
"""float32 rounding of log2, of the level and of the scale product (a few ulp each)."""


def np_decode(codes: torch.Tensor, scales: torch.Tensor, signed: bool) -> np.ndarray:
    """float64 values of the codes from the codebook's definition; block b of 2048 elements has scale b."""
    c = codes.numpy().astype(np.int64)
    a = np.repeat(scales.numpy().astype(np.float64), BLOCK)[: c.size]
    if signed:
        j = c & 127
        mag = np.where(j > 0, 2.0 ** (-16 * (127 - j) / 126), 0.0)
        return np.where(c >= 128, -mag, mag) * a
    return np.where(c > 0, 2.0 ** (-24 * (255 - c) / 254), 0.0) * a


# ---------------------------------------------------------------------------------------------
# the codebooks
# ---------------------------------------------------------------------------------------------


def test_v_codes_of_hand_picked_values():
    """absmax a = 1 (the block holds 1), k = clamp(round(255 - log2(1 / x) * 254 / 24), 1, 255):

    - x = 1:      k = 255 - 0 = 255, decodes to 2^0 = 1 (the absmax is exact);
    - x = 2^-24:  k = 255 - 24 * 254 / 24 = 1, decodes to 2^-24 (the lowest level);
    - x = 2^-30:  k = 255 - 30 * 254 / 24 = -62.5 -> clamped up to 1, decodes to 2^-24 (never to 0);
    - x = 0:      code 0, decodes to 0;
    - x = 2^-12:  k = 255 - 12 * 254 / 24 = 255 - 127 = 128 exactly, decodes to 2^(-24 * 127 / 254) = 2^-12;
    - x = 0.5:    k = 255 - 254 / 24 = 244.42 -> 244, decodes to 2^(-24 * 11 / 254).

    The same values times 3 have the same codes and scale 3 (the codebook is relative to the absmax).
    """
    x = torch.tensor([1.0, 2**-24, 2**-30, 0.0, 2**-12, 0.5])
    codes, scales = quantize(x, signed=False)
    assert codes.dtype == torch.uint8 and codes.tolist() == [255, 1, 1, 0, 128, 244]
    assert scales.tolist() == [1.0]
    expected = torch.tensor([1.0, 2**-24, 2**-24, 0.0, 2**-12, 2 ** (-24 * 11 / 254)])
    torch.testing.assert_close(dequantize(codes, scales, signed=False), expected, rtol=1e-6, atol=0)
    codes3, scales3 = quantize(3 * x, signed=False)
    assert torch.equal(codes3, codes) and scales3.tolist() == [3.0]
    torch.testing.assert_close(dequantize(codes3, scales3, signed=False), 3 * expected, rtol=1e-6, atol=0)


def test_m_codes_of_hand_picked_values():
    """absmax a = 1, j = round(127 - log2(1 / |x|) * 126 / 16) clamped to [0, 127], sign in the top bit:

    - x = -1:     j = 127, code 128 + 127 = 255, decodes to -1;   x = 1: code 127 -> 1;
    - x = 2^-8:   j = 127 - 8 * 126 / 16 = 127 - 63 = 64, code 64 -> 2^(-16 * 63 / 126) = 2^-8;
      x = -2^-8: code 128 + 64 = 192 -> -2^-8;
    - x = 2^-16:  j = 127 - 126 = 1 (the lowest level), decodes to 2^-16;
    - x = -2^-17: j = 127 - 17 * 126 / 16 = -6.875 -> 0: code 0 (no sign bit on a zero), decodes to 0;
    - x = 0:      code 0;
    - x = 0.5:    j = 127 - 126 / 16 = 119.125 -> 119, decodes to 2^(-16 * 8 / 126);
    - the zero threshold, half a log-step (8 / 126 octave) under 2^-16: |x| = 2^-16 * 2^(-0.49 * 16 / 126)
      gives j = 1 - 0.49 = 0.51 -> 1; |x| = 2^-16 * 2^(-0.51 * 16 / 126) gives j = 0.49 -> 0.
    """
    step = 16 / 126
    x = torch.tensor(
        [-1.0, 1.0, 2**-8, -(2**-8), 2**-16, -(2**-17), 0.0, 0.5, 2 ** (-16 - 0.49 * step), -(2 ** (-16 - 0.51 * step))]
    )
    codes, scales = quantize(x, signed=True)
    assert codes.tolist() == [255, 127, 64, 192, 1, 0, 0, 119, 1, 0]
    assert scales.tolist() == [1.0]
    expected = torch.tensor([-1.0, 1.0, 2**-8, -(2**-8), 2**-16, 0.0, 0.0, 2 ** (-8 * step), 2**-16, 0.0])
    torch.testing.assert_close(dequantize(codes, scales, signed=True), expected, rtol=1e-6, atol=0)


def test_relative_error_is_bounded():
    """The levels of v are evenly spaced in log2: level k sits at log2(a) - d (255 - k) with d = 24 / 254
    octaves. Rounding ``255 - log2(a / x) / d`` to the nearest integer moves log2(x) by at most d / 2, so
    the decoded value x' satisfies 2^(-d/2) <= x' / x <= 2^(d/2), and

        |x' - x| / x <= max(2^(d/2) - 1, 1 - 2^(-d/2)) = 2^(d/2) - 1 = 2^(24 / 508) - 1 = 3.33%

    for every x in [a 2^-24, a] (inside the range). m's magnitudes likewise, with d = 16 / 126:
    2^(16 / 252) - 1 = 4.50% on [a 2^-16, a]. 100,000 log-uniform values per block (2^-20 .. 1 of the
    block's absmax for v, 2^-15.9 .. 1 for m, random signs) stay within the bound, and come close to it
    (the error really is half a level, not less: the codebook is no finer than stated)."""
    g = torch.Generator().manual_seed(0)
    n = 100_000
    v = torch.exp2(-20 * torch.rand(n, generator=g, dtype=torch.float64)).float()
    v[::BLOCK] = 1.0  # each block's absmax is 1: the values span 2^-20 .. 1 of it
    err = np.abs(dequantize(*quantize(v, signed=False), signed=False).double().numpy() / v.double().numpy() - 1)
    assert err.max() <= V_BOUND + SLACK and err.max() > 0.9 * V_BOUND
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    m = sign * torch.exp2(-15.9 * torch.rand(n, generator=g, dtype=torch.float64)).float()
    m[::BLOCK] = -1.0
    err = np.abs(dequantize(*quantize(m, signed=True), signed=True).double().numpy() / m.double().numpy() - 1)
    assert err.max() <= M_BOUND + SLACK and err.max() > 0.9 * M_BOUND


def test_each_block_has_its_own_scale():
    """4196 values: block 0 (2048) of magnitude ~1e4, block 1 (2048) of ~1e-4, a partial last block of 100
    of ~1. One scale for all would put block 1 at 1e-8 of the absmax, below v's 2^-24 (6e-8) and m's 2^-16:
    all would collapse to the lowest code (v) or to 0 (m). Per-block scales keep every value within the
    bound, and the three scales are the blocks' absmaxes exactly."""
    g = torch.Generator().manual_seed(1)
    mags = torch.cat([torch.full((BLOCK,), 1e4), torch.full((BLOCK,), 1e-4), torch.ones(100)])
    x = mags * (0.5 + torch.rand(len(mags), generator=g))  # [4196], within a factor 3 in each block
    for signed, bound in ((False, V_BOUND), (True, M_BOUND)):
        vals = x * torch.where(torch.rand(len(x), generator=g) < 0.5, -1.0, 1.0) if signed else x
        codes, scales = quantize(vals, signed=signed)
        expected = [vals[:BLOCK].abs().max(), vals[BLOCK : 2 * BLOCK].abs().max(), vals[2 * BLOCK :].abs().max()]
        assert scales.tolist() == [float(e) for e in expected]
        decoded = dequantize(codes, scales, signed=signed).double()
        assert ((decoded / vals.double() - 1).abs().max()) <= bound + SLACK


# ---------------------------------------------------------------------------------------------
# the update
# ---------------------------------------------------------------------------------------------

LR, WD, EPS, B1, B2 = 1e-2, 0.1, 1e-8, 0.9, 0.999


def _param_and_grads(n: int = 5000, steps: int = 2, seed: int = 0):
    """A [n] parameter (quantized: n >= 4096; 3 blocks, the last partial) and `steps` gradients whose
    magnitudes span 2^-10 .. 1 with random signs (inside both codebooks' ranges once scaled by 1 - b)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, generator=g)
    grads = [
        torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) * torch.exp2(-10 * torch.rand(n, generator=g))
        for _ in range(steps)
    ]
    return p, grads


def test_first_step_is_adamw_first_step():
    """From m = v = 0: m_1 = (1 - b1) g, v_1 = (1 - b2) g^2, so m_1 / (1 - b1) = g, v_1 / (1 - b2) = g^2 and

        p_1 = p_0 (1 - lr wd) - lr g / (|g| + eps)    (= p_0 (1 - lr wd) - lr sign(g), up to eps)

    computed here in float64. The update of step t uses m_t, v_t computed in float32 from the decoded
    m_{t-1}, v_{t-1} and is quantized after: the first step decodes exact zeros, so it is AdamW's first
    step up to float32 rounding (not quantization error). What is stored afterwards decodes to m_1 and
    v_1 within the codebooks' bounds, with each block's scale its absmax."""
    p0, (g1, _) = _param_and_grads()
    p = p0.clone().requires_grad_()
    opt = AdamW8bit([p], lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, rounding="nearest")
    p.grad = g1.clone()
    opt.step()
    g = g1.double().numpy()
    expected = p0.double().numpy() * (1 - LR * WD) - LR * g / (np.abs(g) + EPS)
    np.testing.assert_allclose(p.detach().double().numpy(), expected, rtol=0, atol=1e-6)
    state = opt.state[p]
    assert float(state["step"]) == 1.0 and state["step"].dtype == torch.float32
    m1, v1 = (1 - B1) * g, (1 - B2) * g**2
    m_dec = np_decode(state["m_code"], state["m_scale"], signed=True)
    v_dec = np_decode(state["v_code"], state["v_scale"], signed=False)
    assert np.abs(m_dec / m1 - 1).max() <= M_BOUND + SLACK
    assert np.abs(v_dec / v1 - 1).max() <= V_BOUND + SLACK
    absmax = np.abs(m1).reshape(-1)[: 2 * BLOCK].reshape(2, BLOCK).max(1).tolist() + [np.abs(m1[2 * BLOCK :]).max()]
    np.testing.assert_allclose(state["m_scale"].numpy(), absmax, rtol=1e-6)


def test_second_step_uses_the_decoded_moments():
    """Step 2 from the stored state: with m_1', v_1' the values of the stored codes (decoded here in
    float64 from the codebook's definition),

        m_2 = b1 m_1' + (1 - b1) g_2,  v_2 = b2 v_1' + (1 - b2) g_2^2
        p_2 = p_1 (1 - lr wd) - lr / (1 - b1^2) * m_2 / (sqrt(v_2 / (1 - b2^2)) + eps)

    The optimizer matches this to float32 rounding (1e-6); using the unquantized m_1, v_1 instead would be
    off by up to lr x 4.5% = 4.5e-4."""
    p0, (g1, g2) = _param_and_grads()
    p = p0.clone().requires_grad_()
    opt = AdamW8bit([p], lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    p.grad = g1.clone()
    opt.step()
    p1 = p.detach().double().numpy().copy()
    s = opt.state[p]
    m1 = np_decode(s["m_code"], s["m_scale"], signed=True)
    v1 = np_decode(s["v_code"], s["v_scale"], signed=False)
    p.grad = g2.clone()
    opt.step()
    g = g2.double().numpy()
    m2, v2 = B1 * m1 + (1 - B1) * g, B2 * v1 + (1 - B2) * g**2
    expected = p1 * (1 - LR * WD) - LR / (1 - B1**2) * m2 / (np.sqrt(v2 / (1 - B2**2)) + EPS)
    np.testing.assert_allclose(p.detach().double().numpy(), expected, rtol=0, atol=1e-6)


def test_small_parameters_keep_float32_moments_and_match_torch_adamw():
    """A parameter of fewer than 4096 elements (a norm, a bias) keeps float32 ``exp_avg`` / ``exp_avg_sq``
    and the same operations in the same order as torch's single-tensor AdamW: 5 steps equal torch's bitwise."""
    g = torch.Generator().manual_seed(2)
    p0, grads = torch.randn(100, generator=g), [torch.randn(100, generator=g) for _ in range(5)]
    ours, ref = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    opts = [AdamW8bit([ours], lr=LR, weight_decay=WD), torch.optim.AdamW([ref], lr=LR, weight_decay=WD)]
    for grad in grads:
        for p, opt in zip((ours, ref), opts, strict=True):
            p.grad = grad.clone()
            opt.step()
    assert set(opts[0].state[ours]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opts[0].state[ours]["exp_avg"].dtype == torch.float32
    assert torch.equal(ours, ref)


def test_chunks_and_layout_do_not_change_the_result(monkeypatch):
    """Work in chunks of 2 blocks instead of 2^22 elements, and on a non-contiguous (transposed) parameter
    with the same values: the parameter and the stored state are bitwise the same (blocks are over the
    flattened parameter in its logical order; every operation is element-wise or per block)."""
    import anypo.optim as optim

    p0 = torch.randn(125, 80, generator=torch.Generator().manual_seed(3))  # 10000 elements: 4 blocks and a part
    grads = [torch.randn(125, 80, generator=torch.Generator().manual_seed(4 + i)) for i in range(3)]

    def run(param):
        opt = AdamW8bit([param], lr=LR, weight_decay=WD, rounding="nearest")  # the draws follow the chunks
        for grad in grads:
            param.grad = grad.clone()
            opt.step()
        return param.detach().clone(), opt.state[param]

    whole, state = run(p0.clone().requires_grad_())
    transposed = torch.nn.Parameter(p0.t().contiguous().t())  # the same values, column-major
    assert not transposed.is_contiguous()
    t_out, t_state = run(transposed)
    monkeypatch.setattr(optim, "CHUNK", 2 * BLOCK)
    chunked, c_state = run(p0.clone().requires_grad_())
    for other, other_state in ((t_out, t_state), (chunked, c_state)):
        assert torch.equal(other, whole)
        assert all(torch.equal(other_state[k], state[k]) for k in state)


def test_tracks_adamw_on_least_squares():
    """y = X W^T + Z U^T + b (W [8, 4096], U [8, 600]: quantized; b [8]: float32 moments), MSE to a noiseless
    target, 50 steps at lr 1e-3, weight decay 0.01, from the same small random init, against torch AdamW.

    Why the bound is 0.2 of the distance travelled, not 1e-2: a moment is re-encoded every step, and
    round-to-nearest on a log grid absorbs every change smaller than half a level. m's levels are
    2^(16/126) = 9.2% apart, and a step changes m by (1 - b1) (g - m) = 10% of (g - m), so m stays on its
    level until g differs from it by ~45%: m lags AdamW's by up to one level, and each update differs
    by up to ~10% from AdamW's, in a direction that does not average out. The trajectories therefore
    separate by an amount of that order relative to the distance travelled (measured: 0.13 for W, 0.12
    for U). The loss follows AdamW's: at every step within 1.5x of it (measured: at most 1.19x), and both
    reach < 1% of the initial loss (measured: 0.3%)."""
    g = torch.Generator().manual_seed(0)
    X, Z = torch.randn(256, 4096, generator=g), torch.randn(256, 600, generator=g)
    Y = X @ (torch.randn(8, 4096, generator=g) / 64).T + Z @ (torch.randn(8, 600, generator=g) / 25).T + 0.5
    init = [torch.randn(8, 4096, generator=g) * 0.01, torch.randn(8, 600, generator=g) * 0.01, torch.zeros(8)]

    def train(cls, **kw):
        W, U, b = (t.clone().requires_grad_() for t in init)
        opt = cls([W, U, b], lr=1e-3, weight_decay=0.01, **kw)
        losses = []
        for _ in range(50):
            loss = ((X @ W.T + Z @ U.T + b - Y) ** 2).mean()
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [t.detach() for t in (W, U)], losses

    (W8, U8), loss8 = train(AdamW8bit, rounding="nearest")
    (Wa, Ua), loss_a = train(torch.optim.AdamW)
    for ours, ref, start in ((W8, Wa, init[0]), (U8, Ua, init[1])):
        assert (ours - ref).norm() <= 0.2 * (ref - start).norm()
    assert all(q <= 1.5 * a for q, a in zip(loss8, loss_a, strict=True))
    assert loss8[-1] < 0.01 * loss8[0] and loss_a[-1] < 0.01 * loss_a[0]


def test_stochastic_rounding_is_unbiased():
    """One block of 2048 values (v: positive, 2^-20 .. 1 of the absmax; m: signed, down to 2^-20, under
    m's lowest level 2^-16) encoded N = 2000 times with independent uniforms. A value between the levels
    L and L 2^d goes up with probability p = (x - L) / (L 2^d - L), so E[decoded] = x exactly; one
    decoded value is off by at most the gap, so the mean of N is within 5 gap / (2 sqrt N) of x with
    overwhelming probability (gap: x (2^d - 1) inside the range, the lowest level L_1 under it, where
    the neighbours are 0 and L_1)."""
    from anypo.optim import _decode, _encode

    n, N = BLOCK, 2000
    g = torch.Generator().manual_seed(7)
    mag = torch.exp2(-20 * torch.rand(n, generator=g))
    mag[0] = 1.0  # the absmax
    for signed, octaves, steps in ((False, 24, 254), (True, 16, 126)):
        x = torch.where(torch.rand(n, generator=g) < 0.5, -mag, mag) if signed else mag
        codes = torch.empty(n * N, dtype=torch.uint8)
        scales = torch.empty(N)
        _encode(x.repeat(N), codes, scales, signed, u=torch.rand(n * N, generator=g))
        mean = _decode(codes, scales, signed).view(N, n).double().mean(0)
        d = octaves / steps
        lowest = 2.0**-octaves
        gap = torch.where(mag >= lowest, mag.double() * (2**d - 1), torch.full((n,), lowest, dtype=torch.float64))
        if not signed:  # v below its range rounds up to code 1 (never 0): biased up there by design
            inside = mag >= lowest
            x, mean, gap = x[inside], mean[inside], gap[inside]
        assert torch.all((mean - x.double()).abs() <= 5 * gap / (2 * N**0.5))
        assert float(mean[0]) == float(x[0])  # the absmax (|x| = 1) is stored exactly in every draw


def test_stochastic_rounding_lets_the_second_moment_decay():
    """b2 = 0.999, lr 0 (the weights do not matter). In each of 2 blocks, element 0 keeps v = 1 exactly
    (g_1 = sqrt(1000), then g = 1: v_1 = 0.001 * 1000 = 1 and v_t = 0.999 + 0.001 = 1), so every block's
    absmax and grid stay put; the other 4094 elements get g_1 = sqrt(10) (v_1 = 0.01) and then 0, so
    exactly v_t = 0.01 * 0.999^(t - 1): after T = 200 steps 0.01 * 0.999^199 = 0.008195.

    Round-to-nearest keeps them at 0.01 (a 0.1% change per step is under half a level, 3.3%): 1.22x
    too large, so their Adam steps are 10% too small, for ever. Stochastic rounding keeps E[stored v_t]
    = 0.999 E[stored v_{t-1}]: each step adds independent noise of at most half a level's gap (3.4%)
    of v, so one element's stored v_T has a relative spread of at most sqrt(T) * 3.4% = 48%, and the
    mean of 4094 elements is within 5 * 48% / 64 = 3.8% of 0.008195."""
    T, n = 200, 2 * BLOCK
    exact = 0.01 * 0.999 ** (T - 1)
    means = {}
    for rounding in ("nearest", "stochastic"):
        p = torch.nn.Parameter(torch.zeros(n))
        opt = AdamW8bit([p], lr=0.0, betas=(0.9, 0.999), weight_decay=0.0, rounding=rounding, seed=3)
        for t in range(1, T + 1):
            grad = torch.zeros(n)
            grad[::BLOCK] = 1000**0.5 if t == 1 else 1.0
            if t == 1:
                grad[1:BLOCK] = grad[BLOCK + 1 :] = 10**0.5
            p.grad = grad
            opt.step()
        s = opt.state[p]
        v = dequantize(s["v_code"], s["v_scale"], signed=False).view(2, BLOCK)
        torch.testing.assert_close(v[:, 0], torch.ones(2), rtol=1e-6, atol=0)  # stored exactly (float32 v_t)
        means[rounding] = float(v[:, 1:].double().mean())
    assert means["nearest"] / exact > 1.15
    assert abs(means["stochastic"] / exact - 1) < 0.038


def test_stochastic_rounding_draws_depend_on_the_seed_and_step_only():
    """Two optimizers with the same seed store the same codes bitwise after 3 steps (the draws come from
    the seed, the step number and the parameter's position, not from torch's global generator, which is
    reseeded in between); another seed stores other codes; an unknown rounding is refused."""
    grads = [torch.randn(5000, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def codes(seed: int) -> torch.Tensor:
        p = torch.nn.Parameter(torch.zeros(5000))
        opt = AdamW8bit([p], lr=1e-2, seed=seed)
        for i, grad in enumerate(grads):
            torch.manual_seed(100 + i + seed)  # the global stream must not matter
            p.grad = grad.clone()
            opt.step()
        return torch.cat([opt.state[p]["m_code"], opt.state[p]["v_code"]])

    assert torch.equal(codes(0), codes(0))
    assert not torch.equal(codes(0), codes(1))
    with pytest.raises(ValueError, match="rounding must be one of"):
        AdamW8bit([torch.nn.Parameter(torch.zeros(3))], rounding="down")


# ---------------------------------------------------------------------------------------------
# state: checkpoints, dtypes, memory
# ---------------------------------------------------------------------------------------------


def _net(seed: int = 5) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 80), torch.nn.Tanh(), torch.nn.Linear(80, 3))  # 5120-weight


def _steps(net, opt, seeds) -> None:
    for s in seeds:
        x = torch.randn(16, 64, generator=torch.Generator().manual_seed(s))
        opt.zero_grad()
        net(x).square().mean().backward()
        net[2].bias.grad = None  # a parameter without a gradient is skipped (and gets no state)
        opt.step()


def test_state_dict_round_trip_through_a_checkpoint_is_exact(tmp_path):
    """3 steps; the state goes through the loops' checkpoint path (keyed by parameter name as the
    distributed loop writes it, ``checkpoint.save`` / ``load``, back to positions) into a fresh optimizer
    over a copy of the parameters; 2 more steps in both: the parameters and the states are bitwise equal.
    The codes stay uint8 and the scales float32 (torch's load_state_dict would cast every tensor of a
    parameter's state to the parameter's dtype, the codes included), and the step counter is kept."""
    net = _net()
    opt = AdamW8bit(net.parameters(), lr=1e-2, weight_decay=0.01)
    _steps(net, opt, range(3))
    names = [n for n, _ in net.named_parameters()]
    saved = checkpoint.optimizer_state_by_name(opt.state_dict(), names)
    checkpoint.save(tmp_path, 3, {"policy": {k: v.clone() for k, v in net.state_dict().items()}}, {"optimizer": saved})
    tensors, state = checkpoint.load(checkpoint.latest(tmp_path))
    net2 = _net(seed=99)
    net2.load_state_dict(tensors["policy"])
    opt2 = AdamW8bit(net2.parameters(), lr=1e-2, weight_decay=0.01)
    opt2.load_state_dict(checkpoint.optimizer_state_by_index(state["optimizer"], names))
    w2 = opt2.state[net2[0].weight]
    assert (w2["m_code"].dtype, w2["v_code"].dtype, w2["m_scale"].dtype) == (torch.uint8, torch.uint8, torch.float32)
    assert float(w2["step"]) == 3.0 and net2[2].bias not in opt2.state
    _steps(net, opt, range(3, 5))
    _steps(net2, opt2, range(3, 5))
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)
        sa, sb = opt.state.get(a, {}), opt2.state.get(b, {})
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bfloat16_parameters_keep_float32_scales_after_loading():
    """A bfloat16 parameter: the update runs in float32 and the weights are written back in bfloat16; after
    ``torch.save`` / ``load_state_dict`` its scales (and a small parameter's moments) are still float32,
    not bfloat16 as torch's own cast would make them."""
    big = torch.nn.Parameter(torch.randn(5000).bfloat16())
    small = torch.nn.Parameter(torch.randn(10).bfloat16())
    opt = AdamW8bit([big, small], lr=1e-2)
    big.grad, small.grad = torch.randn(5000).bfloat16(), torch.randn(10).bfloat16()
    before = big.detach().clone()
    opt.step()
    assert big.dtype == torch.bfloat16 and not torch.equal(big, before)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2 = AdamW8bit([torch.nn.Parameter(big.detach().clone()), torch.nn.Parameter(small.detach().clone())])
    opt2.load_state_dict(torch.load(buf))
    s_big, s_small = (opt2.state[p] for p in opt2.param_groups[0]["params"])
    assert s_big["m_code"].dtype == torch.uint8 and s_big["v_scale"].dtype == torch.float32
    assert torch.equal(s_big["v_scale"], opt.state[big]["v_scale"])
    assert s_small["exp_avg_sq"].dtype == torch.float32


def test_state_is_about_two_bytes_per_element():
    """A 2^20 + 5 element parameter: 1 + 1 bytes of codes per element, 4 + 4 bytes of scales per 2048
    elements and a 4-byte step: 2 + 8 / 2048 + 4 / n = 2.0039 bytes per element (torch AdamW: 8)."""
    n = (1 << 20) + 5
    p = torch.nn.Parameter(torch.zeros(n))
    opt = AdamW8bit([p])
    p.grad = torch.randn(n)
    opt.step()
    per_element = sum(t.nbytes for t in opt.state[p].values()) / n
    assert per_element <= 2.01
    assert per_element == pytest.approx(2 + 8 * 513 / n + 4 / n)


def test_unsupported_options_and_sparse_gradients_are_refused():
    p = torch.nn.Parameter(torch.zeros(10))
    with pytest.raises(ValueError, match="maximize"):
        AdamW8bit([p], maximize=True)
    with pytest.raises(ValueError, match="amsgrad"):
        AdamW8bit([p], amsgrad=True)
    with pytest.raises(ValueError, match="betas"):
        AdamW8bit([p], betas=(0.9, 1.0))
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = AdamW8bit(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# ---------------------------------------------------------------------------------------------
# the --optimizer option
# ---------------------------------------------------------------------------------------------


def test_make_optimizer_builds_each_choice():
    """adamw: torch AdamW (fused when asked); adamw8bit: AdamW8bit with the run's lr, betas, weight decay
    (fused does not apply); adafactor: torch Adafactor with lr as given."""
    params = [torch.nn.Parameter(torch.zeros(3, 3))]
    cfg = TrainConfig(lr=3e-4, betas=(0.8, 0.95), weight_decay=0.05)
    adamw = make_optimizer(params, cfg, fused=True)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["fused"] is True
    assert make_optimizer(params, cfg).defaults["fused"] is None
    eight = make_optimizer(params, dataclasses.replace(cfg, optimizer="adamw8bit"), fused=True)
    assert type(eight) is AdamW8bit
    assert (eight.defaults["lr"], eight.defaults["betas"], eight.defaults["weight_decay"]) == (3e-4, (0.8, 0.95), 0.05)
    ada = make_optimizer(params, dataclasses.replace(cfg, optimizer="adafactor"))
    assert type(ada) is torch.optim.Adafactor and (ada.defaults["lr"], ada.defaults["weight_decay"]) == (3e-4, 0.05)
    with pytest.raises(ValueError, match="--optimizer"):
        make_optimizer(params, dataclasses.replace(cfg, optimizer="sgd"))


def test_an_unknown_optimizer_is_one_clear_problem():
    """The config check names the option and the allowed values; every loop runs it (the preference and
    reward-model loops through the shared scaffold check), and the distributed learners refuse the
    non-AdamW choices before anything starts."""
    from anypo.train_rm import RMTrainConfig, rm_config_problems

    cfg = TrainConfig(model=ModelConfig(name="tiny"))
    assert not [p for p in train_config_problems(cfg) if "optimizer" in p]
    (problem,) = [p for p in train_config_problems(dataclasses.replace(cfg, optimizer="adam")) if "optimizer" in p]
    assert problem == "--optimizer is 'adam': choose one of adamw, adamw8bit, adafactor"
    assert problem in rm_config_problems(RMTrainConfig(model=ModelConfig(name="tiny"), optimizer="adam"))
    ray = dataclasses.replace(cfg, optimizer="adamw8bit", dist=DistConfig(backend="ray"))
    (sharded,) = [p for p in train_config_problems(ray) if "--optimizer adamw8bit" in p]
    assert "--dist.backend ray" in sharded and "use --optimizer adamw" in sharded


def test_the_fsdp2_learner_refuses_an_unsharded_optimizer_with_the_config_checks_words(tmp_path):
    """A learner built directly (not through ``anypo train``) stops before making its run directory, with
    the same sentence the config check gives."""
    from anypo.distributed.learner import LearnerContext

    cfg = TrainConfig(model=ModelConfig(name="tiny"), optimizer="adafactor", dist=DistConfig(backend="ray"))
    (problem,) = [p for p in train_config_problems(cfg) if "--optimizer" in p]
    with pytest.raises(ValueError) as err:
        LearnerContext.build(cfg, tmp_path / "run")
    assert str(err.value) == problem
    assert not (tmp_path / "run").exists()


def test_cli_rejects_an_unknown_optimizer_in_one_line(tmp_path, capsys):
    rc = cli.main(["train", "grpo", "--model.name", "tiny", "--optimizer", "bogus", "--out-dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["anypo: error: --optimizer is 'bogus': choose one of adamw, adamw8bit, adafactor"]
    assert not any(tmp_path.iterdir())  # refused before a run directory was made
