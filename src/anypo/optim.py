"""AdamW with 8-bit optimizer states: the same update as ``torch.optim.AdamW``, a quarter of its state memory.

:class:`AdamW8bit` is decoupled-weight-decay AdamW (Loshchilov & Hutter, https://arxiv.org/abs/1711.05101,
Algorithm 2; ``torch.optim.AdamW`` with ``amsgrad=False``). At step t, for a parameter p with gradient g:

    p   <- p * (1 - lr * wd)
    m_t  = b1 m_{t-1} + (1 - b1) g
    v_t  = b2 v_{t-1} + (1 - b2) g^2
    p   <- p - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

Between steps, m and v are stored as one uint8 code per element plus one float32 scale (the absolute
maximum) per block of 2048 elements of the flattened parameter: block-wise quantization as in Dettmers
et al., "8-bit Optimizers via Block-wise Quantization" (https://arxiv.org/abs/2110.02861). A step
decodes m_{t-1} and v_{t-1}, computes m_t, v_t and the update in float32 from them (the update of step
t uses the unquantized m_t, v_t), then encodes m_t and v_t, by default with unbiased stochastic rounding
(each value goes to one of its two neighbouring levels with the probabilities that make the expected
decoded value exact; ``rounding="nearest"`` rounds to the nearest level). The first step starts from
m = v = 0.

Deviation from the paper: instead of its dynamic tree map, a logarithmic codebook (levels evenly spaced
in log2 of the value relative to its block's absmax ``a``):

- v (non-negative), S_v = 24 octaves: code 0 is exactly 0; code k = 1..255 is ``a * 2^(-S_v (255 - k) / 254)``
  (code 255 = a, code 1 = a * 2^-24). A value x > 0 is encoded as
  ``k = clamp(round(255 - log2(a / x) * 254 / S_v), 1, 255)``: values below the lowest level round up to
  code 1, never to 0, so a positive second moment never decodes to 0 (which would turn m / (sqrt(v) + eps)
  into m / eps).
- m (signed), S_m = 16 octaves: the top bit is the sign, the low 7 bits a magnitude code j; j = 0 is 0,
  j = 1..127 is ``a * 2^(-S_m (127 - j) / 126)``, and ``j = clamp(round(127 - log2(a / |x|) * 126 / S_m), 0, 127)``.
  Values under half a log-step below the lowest level (``|x| < a * 2^-S_m / 2^(S_m / 252)``) decode to 0.

Error bound: rounding log2(x) to the nearest level of spacing ``d = S / n`` (n = 254 steps for v, 126
for m) moves it by at most d / 2, so a value inside the codebook's range decodes with a relative error
of at most ``2^(d / 2) - 1``: 2^(24 / 508) - 1 = 3.33% for v and 2^(16 / 252) - 1 = 4.50% for m. That bound is for
``rounding="nearest"``; stochastic rounding moves a value by up to one whole level (9.2% for m, 6.8% for
v) but not on average, which is what matters to a moment re-encoded every step. The largest value of
each block is stored exactly (code 255 / j = 127).

Memory: 2 bytes per element plus 8 bytes per 2048 elements (2.004 bytes), against torch AdamW's 8.
Parameters of fewer than :data:`MIN_QUANTIZED_NUMEL` elements (norms, biases) keep float32 ``exp_avg``
and ``exp_avg_sq`` as torch does: quantizing them saves nothing worth a second code path's error. The
float32 work is done ``CHUNK`` elements at a time, so a large parameter (the 49152 x 576 embedding)
never has more than a few chunk-sized float32 temporaries.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from anypo.tasks.base import stable_seed

__all__ = ["BLOCK", "AdamW8bit", "dequantize", "quantize"]

BLOCK = 2048
"""Elements per quantization block (one float32 absmax scale each)."""
CHUNK = 1 << 22
"""Elements decoded, updated and re-encoded at a time (a multiple of BLOCK: chunks hold whole blocks)."""
MIN_QUANTIZED_NUMEL = 4096
"""Parameters with fewer elements keep float32 moments."""
V_OCTAVES = 24
"""S_v: the second moment's codes span 2^-24 .. 1 of the block's absmax."""
M_OCTAVES = 16
"""S_m: the first moment's magnitude codes span 2^-16 .. 1 of the block's absmax."""

ROUNDING = ("stochastic", "nearest")
"""How AdamW8bit encodes the new moments each step."""
_FLOAT_STATE = ("m_scale", "v_scale", "exp_avg", "exp_avg_sq")
_CODE_STATE = ("m_code", "v_code")


def _codebook(signed: bool) -> Tensor:
    """The 256 decoded values of the codes for absmax 1 (float64 exponents, rounded once to float32)."""
    k = torch.arange(256, dtype=torch.float64)
    if signed:
        j = k.remainder(128)
        mag = torch.exp2(M_OCTAVES * (j - 127) / 126) * (j > 0)
        return torch.where(k >= 128, -mag, mag).float()
    return (torch.exp2(V_OCTAVES * (k - 255) / 254) * (k > 0)).float()


_TABLES = {True: _codebook(True), False: _codebook(False)}


def _blocks(x: Tensor) -> list[Tensor]:
    """A 1-D tensor as 2-D views of its blocks: ``[n // BLOCK, BLOCK]`` whole blocks, then ``[1, n % BLOCK]``."""
    n = x.numel()
    whole = n // BLOCK * BLOCK
    parts = [x[:whole].view(-1, BLOCK)] if whole else []
    if n > whole:
        parts.append(x[whole:].view(1, -1))
    return parts


def _encode(x: Tensor, codes: Tensor, scales: Tensor, signed: bool, u: Tensor | None = None) -> None:
    """Encode the float32 values ``x [n]`` into ``codes [n]`` (uint8) and ``scales [ceil(n / BLOCK)]`` in place,
    rounding to the nearest level, or stochastically with the uniforms ``u [n]`` in [0, 1) (``_round_stochastic_``)."""
    per_octave = 126 / M_OCTAVES if signed else 254 / V_OCTAVES  # codes per octave
    top = 127 if signed else 255
    s0 = e0 = 0
    for xb, cb in zip(_blocks(x), _blocks(codes), strict=True):  # [b, w] values and their codes
        a = xb.abs() if signed else xb  # [b, w]
        if u is None:
            absmax = a.amax(dim=1)  # [b]
        else:
            absmax, at = a.max(dim=1)  # [b]: each block's largest value and where it is
        scales[s0 : s0 + len(absmax)] = absmax
        s0 += len(absmax)
        safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block: every code 0
        # k = round(top - log2(absmax / a) * per_octave) = round(log2(a) * per_octave + offset); log2(0) = -inf
        offset = top - safe.log2() * per_octave  # [b]
        k = torch.log2(a).mul_(per_octave).add_(offset[:, None])
        if u is None:
            k.round_()
        else:
            _round_stochastic_(k, u[e0 : e0 + xb.numel()].view_as(xb), 1 / per_octave, signed)
            exact = torch.full_like(absmax, top).masked_fill_(absmax == 0, float("-inf"))  # (all-zero block: 0)
            k.scatter_(1, at[:, None], exact[:, None])  # the block's largest value stays exact
        e0 += xb.numel()
        k.clamp_(0 if signed else 1, top)  # v: below-range values round up to code 1, never to 0
        if not signed:
            k.mul_(torch.sign(xb))  # only an exact 0 is code 0 (x >= 0: sign 0 or 1; cheaper than a mask)
        cb.copy_(k)
        if signed:
            cb.add_(((xb < 0) & (cb > 0)).to(torch.uint8), alpha=128)  # the sign bit (none on a zero)


def _round_stochastic_(k: Tensor, u: Tensor, d: float, signed: bool) -> None:
    """Round fractional code positions ``k`` (in place) to a neighbouring code so that the decoded value
    is unbiased: for x between the levels L = a 2^(d (lo - top)) (code lo = floor(k)) and L 2^d (code
    lo + 1), take lo + 1 with probability ``(x - L) / (L 2^d - L) = (2^(d (k - lo)) - 1) / (2^d - 1)``,
    so that E[decoded] = L + p (L 2^d - L) = x. Below code 1 of the signed codebook the lower neighbour
    is the value 0 (code 0): code 1 with probability x / L_1 = 2^(d (k - 1)). ``d``: octaves per code.

    Round-to-nearest loses every change smaller than half a level, and a moment changes by a small
    fraction per step (v by 1 - b2 = 0.1% of g^2 - v, against half a level of 3.3%): with it, v can
    grow but not decay, and m lags g. Unbiased rounding keeps the expected stored moment equal to the
    float32 one (tests/unit/test_optim.py, test_stochastic_rounding_lets_the_second_moment_decay)."""
    lo = k.floor()
    p = (k - lo).mul_(d).exp2_().sub_(1).div_(2**d - 1).nan_to_num_(nan=0.0)  # k = -inf (x = 0): p = 0
    if signed:  # the few values below code 1 (indexed: a full-size where costs more than they do)
        below = (k.view(-1) < 1).nonzero().squeeze(1)
        if len(below):
            p.view(-1)[below] = torch.exp2((k.view(-1)[below] - 1) * d)  # exp2(-inf) = 0: a zero stays 0
            lo.view(-1)[below] = 0.0
    # lo + floor(p + u) is lo + 1 exactly when u >= 1 - p, which has probability p
    torch.floor(lo.add_(p).add_(u), out=k)  # a v of 0 stays -inf here and becomes code 0 in _encode


def _decode(codes: Tensor, scales: Tensor, signed: bool) -> Tensor:
    """The float32 values ``[n]`` of ``codes [n]`` with block scales ``scales [ceil(n / BLOCK)]``."""
    table = _TABLES[signed].to(codes.device)
    out = torch.index_select(table, 0, codes.int())  # [n]: the values for absmax 1
    s0 = 0
    for ob in _blocks(out):  # [b, w]
        ob.mul_(scales[s0 : s0 + ob.shape[0], None])
        s0 += ob.shape[0]
    return out


def quantize(x: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """Block-wise 8-bit codes of a tensor (flattened) and the float32 absmax of each block.

    Args:
        x: any shape; ``signed=False`` requires ``x >= 0`` (a second moment).
        signed: the first moment's sign + 7-bit codebook, else the second moment's 8-bit one.

    Returns:
        ``codes [x.numel()]`` (uint8) and ``scales [ceil(x.numel() / BLOCK)]`` (float32).
    """
    flat = x.detach().reshape(-1).float()
    codes = torch.empty(flat.numel(), dtype=torch.uint8, device=x.device)
    scales = torch.empty(-(-flat.numel() // BLOCK), dtype=torch.float32, device=x.device)
    _encode(flat, codes, scales, signed)
    return codes, scales


def dequantize(codes: Tensor, scales: Tensor, signed: bool) -> Tensor:
    """The float32 values ``[codes.numel()]`` of :func:`quantize`'s codes and scales."""
    return _decode(codes, scales, signed)


class AdamW8bit(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose first and second moments are stored in 8 bits per element.

    The update is ``torch.optim.AdamW``'s (``amsgrad=False``, ``maximize=False``); only the stored moments
    differ (see the module docstring for the codebook and its error bound). State per parameter:
    ``step`` (a float32 scalar tensor, as torch's), and either ``m_code`` / ``v_code`` (uint8, one per
    element of the flattened parameter) with ``m_scale`` / ``v_scale`` (float32, one per 2048 elements),
    or, for parameters of fewer than 4096 elements, float32 ``exp_avg`` / ``exp_avg_sq`` as torch's.

    Args:
        params: parameters or parameter groups (each group may set lr, betas, eps, weight_decay).
        lr: learning rate.
        betas: (b1, b2), the moments' decay rates.
        eps: added to sqrt(v_hat) in the denominator.
        weight_decay: decoupled weight decay (the weights shrink by ``lr * weight_decay`` per step).
        rounding: how the new moments are encoded: ``"stochastic"`` (unbiased; the default) or
            ``"nearest"`` (see ``_round_stochastic_`` for why nearest loses small changes).
        seed: the stochastic rounding's random stream; the draws of a step depend only on the seed,
            the step number and the parameter's position, so a resumed run draws what the
            uninterrupted one drew.
        amsgrad, maximize: accepted for torch's signature; only False is supported.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        rounding: str = "stochastic",
        seed: int = 0,
        amsgrad: bool = False,
        maximize: bool = False,
    ):
        if rounding not in ROUNDING:
            raise ValueError(f"AdamW8bit: rounding must be one of {ROUNDING}, got {rounding!r}")
        self.rounding, self.seed = rounding, int(seed)
        if amsgrad or maximize:
            raise ValueError("AdamW8bit supports amsgrad=False and maximize=False only")
        if not lr >= 0:
            raise ValueError(f"AdamW8bit: lr must be >= 0, got {lr}")
        if not eps >= 0:
            raise ValueError(f"AdamW8bit: eps must be >= 0, got {eps}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"AdamW8bit: betas must be two numbers in [0, 1), got {betas}")
        if not weight_decay >= 0:
            raise ValueError(f"AdamW8bit: weight_decay must be >= 0, got {weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        for p in chain.from_iterable(g["params"] for g in self.param_groups):
            if hasattr(p, "placements") or p.is_complex() or not p.is_floating_point():
                raise ValueError(
                    f"AdamW8bit trains plain real floating-point tensors; got a {type(p).__name__} of {p.dtype} "
                    "(FSDP2 DTensor shards and complex parameters are not supported: use torch.optim.AdamW)"
                )

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step on every parameter with a gradient (those whose ``grad`` is None are skipped)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = ((group, p) for group in self.param_groups for p in group["params"])
        for index, (group, p) in enumerate(params):  # index: the parameter's position, for its draws
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamW8bit does not support sparse gradients (a dense optimizer, like AdamW)")
            self._update(p, self.state[p], group, index)
        return loss

    def _update(self, p: Tensor, state: dict[str, Any], group: dict[str, Any], index: int) -> None:
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            if p.numel() < MIN_QUANTIZED_NUMEL:
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            else:  # code 0 is 0 in both codebooks: the first step starts from m = v = 0
                n, blocks = p.numel(), -(-p.numel() // BLOCK)
                state["m_code"] = torch.zeros(n, dtype=torch.uint8, device=p.device)
                state["v_code"] = torch.zeros(n, dtype=torch.uint8, device=p.device)
                state["m_scale"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                state["v_scale"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
        state["step"] += 1
        t = float(state["step"])
        # the same scalars, in the same order, as torch's single-tensor AdamW
        step_size = lr / (1 - beta1**t)
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        if wd != 0:
            p.mul_(1 - lr * wd)
        if "exp_avg" in state:
            _adamw_math(
                p, p.grad, state["exp_avg"], state["exp_avg_sq"], beta1, beta2, step_size, bias_correction2_sqrt, eps
            )
            return
        flat_p = p.view(-1) if p.is_contiguous() else p.detach().reshape(-1).clone()
        flat_g = p.grad.reshape(-1)
        m_code, v_code, m_scale, v_scale = state["m_code"], state["v_code"], state["m_scale"], state["v_scale"]
        gen = None
        if self.rounding == "stochastic":  # one stream per (seed, step, parameter): resumable without state
            gen = torch.Generator(device=p.device).manual_seed(stable_seed("adamw8bit", self.seed, int(t), index))
        for start in range(0, flat_p.numel(), CHUNK):
            end = min(start + CHUNK, flat_p.numel())
            blocks = slice(start // BLOCK, -(-end // BLOCK))  # the chunk's blocks (it starts on a block boundary)
            m = _decode(m_code[start:end], m_scale[blocks], signed=True)  # [c] float32 m_{t-1}
            v = _decode(v_code[start:end], v_scale[blocks], signed=False)  # [c] float32 v_{t-1}
            _adamw_math(flat_p[start:end], flat_g[start:end], m, v, beta1, beta2, step_size, bias_correction2_sqrt, eps)
            u_m = u_v = None
            if gen is not None:  # u and 1 - u are each uniform (one draw per element: mt19937 is slow)
                u_m = torch.rand(end - start, generator=gen, device=p.device)
                u_v = torch.rsub(u_m, 1.0)
            _encode(m, m_code[start:end], m_scale[blocks], signed=True, u=u_m)  # m_t, v_t: stored after the update
            _encode(v, v_code[start:end], v_scale[blocks], signed=False, u=u_v)
        if not p.is_contiguous():
            p.copy_(flat_p.view_as(p))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, except that the codes stay uint8 and the scales and float moments stay
        float32: torch casts every tensor of a parameter's state to the parameter's dtype (codes included)."""
        own = (*_FLOAT_STATE, *_CODE_STATE)
        raw = {k: {key: v for key, v in s.items() if key in own} for k, s in state_dict["state"].items()}
        rest = {k: {key: v for key, v in s.items() if key not in own} for k, s in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": rest})  # the step counters, the groups, any other state
        ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for k, p in zip(ids, params, strict=True):
            for key, v in raw.get(k, {}).items():
                dtype = torch.uint8 if key in _CODE_STATE else torch.float32
                self.state[p][key] = v.to(device=p.device, dtype=dtype)


def _adamw_math(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    beta1: float,
    beta2: float,
    step_size: float,
    bc2_sqrt: float,
    eps: float,
) -> None:
    """torch AdamW's moment and parameter update in place on ``p`` (any float dtype), float32 ``m`` and ``v``."""
    g = g.float()  # a view when the gradient is float32 (never written to)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = v.sqrt().div_(bc2_sqrt).add_(eps)
    if p.dtype == torch.float32:
        p.addcdiv_(m, denom, value=-step_size)
    else:
        p.copy_(p.float().addcdiv_(m, denom, value=-step_size))
