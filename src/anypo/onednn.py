"""Float32 linear layers on the CPU through oneDNN instead of the BLAS that ``torch.nn.functional.linear`` calls.

PyTorch's CPU build runs a float32 ``linear`` / ``mm`` through MKL's sgemm. On the 2-core AMD EPYC
machine of ``benchmarks/README.md`` (where ``MKL_ENABLE_INSTRUCTIONS`` changes nothing) the
oneDNN matmul that PyTorch also ships (``torch.ops.mkldnn._linear_pointwise``, the kernel its
compiler uses for CPU linears) is about 2x faster on every shape a small LM's step has: 1.5 against
3.1 ms for [340, 576] x [576, 1536], 0.23 against 0.44 ms for 32 decode rows, 47 against 100 ms for
256 rows through a 49k-vocabulary head. Both are float32 throughout; they differ only in summation
order (measured max |difference| against a float64 product: 9e-5 vs 5e-5 on outputs of size ~100).

``linear`` is a drop-in for ``F.linear`` with its own backward (both gradients are oneDNN matmuls
too); ``use_onednn(model)`` routes every ``nn.Linear`` of a model through it. Anything that is not a
float32 CPU tensor, or runs under autocast, takes ``F.linear`` unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.cache
def available() -> bool:
    """Whether this PyTorch build has the oneDNN linear kernel (and it runs)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.equal(_mm_nt(x, w), torch.full((2, 4), 3.0)))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _mm_nt(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T for 2-D float32 ``a`` [m, k] and ``b`` [n, k] (either may be a strided view)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def _eligible(x: Tensor, weight: Tensor) -> bool:
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and available()
    )


def _linear_nograd(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x W^T + b for x of any leading shape, on oneDNN, recording no graph. A bfloat16 ``weight`` (a
    ``packed_weights`` copy) takes the input rounded to bfloat16 and gives the product back as float32."""
    x2 = x.reshape(-1, x.shape[-1])
    y = _mm_nt(x2, weight) if weight.dtype == x.dtype else _mm_nt(x2.to(weight.dtype), weight).float()
    if bias is not None:
        y.add_(bias)
    return y.view(*x.shape[:-1], weight.shape[0])


def _linear_plain(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``_linear_nograd`` for a float32 weight in its plain layout: oneDNN or MKL, per ``_choose``."""
    x2 = x.reshape(-1, x.shape[-1])
    out, n = weight.shape, x2.shape[0]
    y = _choose("forward", *out, n, lambda: _mm_nt(x2, weight), lambda: torch.mm(x2, weight.t()))
    if bias is not None:
        y.add_(bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class _Linear(torch.autograd.Function):
    """y = x W^T + b with the three matmuls (y, dx = dy W, dW = dy^T x) on oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x.reshape(-1, x.shape[-1]), weight)
        ctx.has_bias, ctx.in_shape = bias is not None, x.shape
        return _linear_plain(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x2, weight = ctx.saved_tensors
        g = grad_y.reshape(-1, weight.shape[0])
        grad_x = grad_input(g, weight).view(ctx.in_shape) if ctx.needs_input_grad[0] else None
        grad_w = grad_weight(g, x2) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN where eligible (float32, CPU, no autocast)."""
    if not _eligible(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return _Linear.apply(x, weight, bias)
    return _linear_plain(x, weight, bias)  # no graph to record: skip the autograd.Function


def mm_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` for 2-D tensors without autograd (inside other autograd functions), on oneDNN where eligible."""
    if not _eligible(a, b) or a.dim() != 2:
        return a @ b.t()
    return _mm_nt(a, b)


# ---- plain-layout matmuls: oneDNN or MKL, whichever this machine runs faster for the shape ----
BACKWARD_MATMUL = ("auto", "onednn", "mkl")
MIN_TUNED_FLOP = 3e7
"""Gradient matmuls below this many FLOPs always run on oneDNN (not worth timing; tiny models' runs
stay the same from process to process)."""
_choices: dict[tuple[str, int, int], str] = {}


def grad_input(g: Tensor, weight: Tensor) -> Tensor:
    """``g @ weight`` for 2-D ``g`` [n, out] and ``weight`` [out, in]: the input gradient of a linear."""
    if not _eligible(g, weight) or g.dim() != 2:
        return g @ weight
    dims = (g.shape[1], weight.shape[1], g.shape[0])
    return _choose("grad_input", *dims, lambda: _mm_nt(g, weight.t()), lambda: torch.mm(g, weight))


def grad_weight(g: Tensor, x: Tensor) -> Tensor:
    """``g.T @ x`` for 2-D ``g`` [n, out] and ``x`` [n, in]: the weight gradient of a linear."""
    if not _eligible(g, x) or g.dim() != 2:
        return g.t() @ x
    dims = (g.shape[1], x.shape[1], g.shape[0])
    return _choose("grad_weight", *dims, lambda: _mm_nt(g.t(), x.t()), lambda: torch.mm(g.t(), x))


def _choose(
    kind: str, out: int, in_: int, n: int, onednn_fn: Callable[[], Tensor], mkl_fn: Callable[[], Tensor]
) -> Tensor:
    """Run the kernel chosen for (``kind``, out, in) of an [n, in] x [in, out] product; time both the
    first time a large shape is seen.

    Which library multiplies a shape faster depends on the CPU. On the AVX2 machine of
    benchmarks/README.md oneDNN does on every shape of a small LM's step. On the AVX-512 + AMX one,
    MKL's ``torch.mm`` is faster where both operands of a gradient matmul reach the kernel
    transposed (the head's weight gradient 76 against 109 ms, the MLP's 2.1 against 2.6 ms) and on
    the MLP's forward over weights not in cache (1.6 against 2.2 ms), oneDNN on the head's forward
    (53 against 62 ms). So the first call of each (kind, weight shape) of at least
    ``MIN_TUNED_FLOP`` runs each kernel three times, alternating, and keeps MKL only where its median
    is at least 10% faster; the choice holds for the process and is saved in checkpoints
    (``kernel_choices``), so that a resumed run multiplies as the uninterrupted one did.
    ``ANYPO_BACKWARD_MATMUL=onednn`` or ``mkl`` fixes the choice. Both are float32 products; they
    differ in summation order only.
    """
    mode = os.environ.get("ANYPO_BACKWARD_MATMUL", "auto")
    if mode not in BACKWARD_MATMUL:
        raise ValueError(f"ANYPO_BACKWARD_MATMUL must be one of {BACKWARD_MATMUL}, got {mode!r}")
    if mode != "auto":
        return mkl_fn() if mode == "mkl" else onednn_fn()
    key = (kind, out, in_)
    choice = _choices.get(key)
    if choice is None:
        if 2.0 * n * out * in_ < MIN_TUNED_FLOP:
            return onednn_fn()
        times: dict[str, list[float]] = {"onednn": [], "mkl": []}
        for _ in range(4):  # the first round warms both up and is not counted
            for name, fn in (("onednn", onednn_fn), ("mkl", mkl_fn)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        fast = statistics.median(times["mkl"][1:]) < 0.9 * statistics.median(times["onednn"][1:])
        choice = _choices[key] = "mkl" if fast else "onednn"
    return mkl_fn() if choice == "mkl" else onednn_fn()


def kernel_choices() -> dict[str, str]:
    """The gradient matmuls' kernel per shape chosen so far in this process, ``"kind:out:in" -> kernel``."""
    return {f"{kind}:{o}:{i}": v for (kind, o, i), v in _choices.items()}


def set_kernel_choices(choices: dict[str, str]) -> None:
    """Restore ``kernel_choices()`` (a checkpoint's); shapes not in it are timed as usual."""
    for key, v in choices.items():
        kind, o, i = key.split(":")
        if v in ("onednn", "mkl"):
            _choices[(kind, int(o), int(i))] = v


def _forward(self: torch.nn.Linear, x: Tensor) -> Tensor:
    packed = self.__dict__.get(_PACKED)
    if packed is not None and not torch.is_grad_enabled() and _eligible(x, self.weight):
        return _linear_nograd(x, packed, self.bias)  # a packed weight keeps its logical [out, in] shape
    return linear(x, self.weight, self.bias)


_PACKED = "_anypo_onednn_packed"  # instance attribute holding the reordered weight inside ``packed_weights``


@contextlib.contextmanager
def packed_weights(model: torch.nn.Module, rows: int, dtype: torch.dtype = torch.float32) -> Iterator[int]:
    """Within the block, routed linears of ``model`` multiply by a copy of their weight kept in oneDNN's
    blocked layout; yields how many layers were packed.

    Each oneDNN call on a plain weight first reorders the whole weight into that layout; a decode
    step, which multiplies a few rows by every weight of the model, pays it on every layer of every
    step. Packing once per ``generate`` call removes it (W1 generation on the AVX2 machine of
    benchmarks/README.md: median 15.6 -> 11.6 s, the same tokens and log-probs bit for bit;
    ``benchmarks/w1_generate.py``). ``rows``
    is the batch size oneDNN picks the layout for; other row counts run on the same copy.

    ``dtype=torch.bfloat16``: the copies are bfloat16 and each product runs in bfloat16 (the input
    rounded to bfloat16, the product rounded to bfloat16 and returned as float32, the bias added in
    float32); everything between the linears stays float32. On a CPU with AMX or AVX-512 BF16
    the decode step's matmuls take 0.28x their float32 time (``benchmarks/bf16_decode.py``); without
    them bfloat16 is converted on the fly and is about 3.4x slower. The outputs are not the float32
    layer's (relative differences of about 2^-8): a caller must not take log-probs computed this way
    for the policy's.

    Only for inference: the copies do not follow the weights (the block must not change them) and are
    used only when autograd is off; the memory is one more copy of the packed weights (float32, or
    half that in bfloat16), freed on exit. A no-op where oneDNN is unavailable or a layer is not a
    float32 CPU ``nn.Linear`` routed by ``use_onednn``.
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"packed_weights: dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    layers = [
        m
        for m in (model.modules() if available() else ())
        if type(m) is torch.nn.Linear
        and getattr(m.__dict__.get("forward"), "__func__", None) is _forward
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
    ]
    try:
        for module in layers:
            weight = module.weight.detach().to(dtype)
            module.__dict__[_PACKED] = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        yield len(layers)
    finally:
        for module in layers:
            module.__dict__.pop(_PACKED, None)


def use_onednn(model: torch.nn.Module) -> int:
    """Route every ``nn.Linear`` of ``model`` through ``linear``; returns how many were routed.

    Only the instances' ``forward`` changes: parameters, state-dict keys, hooks and wrappers that
    call the layer (LoRA adapters included) are untouched. A no-op where oneDNN is unavailable.
    """
    if not available():
        return 0
    n = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = _forward.__get__(module)
            n += 1
    return n
