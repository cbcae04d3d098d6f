"""Float32 linear layers on the CPU through oneDNN instead of the BLAS that ``torch.nn.functional.linear`` calls.

PyTorch's CPU build runs a float32 ``linear`` / ``mm`` through MKL's sgemm. On the 2-core AMD EPYC
machine of ``benchmarks/README.md`` (where ``MKL_ENABLE_INSTRUCTIONS`` changes nothing) the
oneDNN matmul that PyTorch also ships (``torch.ops.mkldnn._linear_pointwise``, the kernel its
compiler uses for CPU linears) is about 2x faster on every shape a small LM's step has: 1.5 against
3.1 ms for [340, 576] x [576, 1536], 0.23 against 0.44 ms for 32 decode rows, 47 against 100 ms for
256 rows through a 49k-vocabulary head. Both are float32 throughout; they differ only in summation
order (measured max |difference| against a float64 product: 9e-5 vs 5e-5 on outputs of size ~100).

``linear`` is a drop-in for ``F.linear`` with its own backward (the two gradient matmuls run on
oneDNN or MKL, whichever this machine multiplies faster: ``grad_input``, ``grad_weight``; on an
AVX-512 + AMX CPU MKL handles their transposed operands faster); ``use_onednn(model)`` routes every
``nn.Linear`` of a model through it. Anything that is not a float32 CPU tensor, or runs under
autocast, takes ``F.linear`` unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Iterator

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


class _Linear(torch.autograd.Function):
    """y = x W^T + b on oneDNN; its gradients dx = dy W and dW = dy^T x on the kernel this machine runs
    faster (``grad_input``, ``grad_weight``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x.reshape(-1, x.shape[-1]), weight)
        ctx.has_bias, ctx.in_shape = bias is not None, x.shape
        return _linear_nograd(x, weight, bias)

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
    return _linear_nograd(x, weight, bias)  # no graph to record: skip the autograd.Function


def mm_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` for 2-D tensors without autograd (inside other autograd functions), on oneDNN where eligible."""
    if not _eligible(a, b) or a.dim() != 2:
        return a @ b.t()
    return _mm_nt(a, b)


# ---- the gradients' matmuls: oneDNN or MKL, whichever this machine runs faster ----
BACKWARD_MATMUL = ("auto", "onednn", "mkl")
_machine: dict[str, str] | None = None  # kind -> kernel, for this process (from the machine's cache file)


def grad_input(g: Tensor, weight: Tensor) -> Tensor:
    """``g @ weight`` for 2-D ``g`` [n, out] and ``weight`` [out, in]: the input gradient of a linear."""
    if not _eligible(g, weight) or g.dim() != 2:
        return g @ weight
    return torch.mm(g, weight) if _kernel("grad_input") == "mkl" else _mm_nt(g, weight.t())


def grad_weight(g: Tensor, x: Tensor) -> Tensor:
    """``g.T @ x`` for 2-D ``g`` [n, out] and ``x`` [n, in]: the weight gradient of a linear."""
    if not _eligible(g, x) or g.dim() != 2:
        return g.t() @ x
    return torch.mm(g.t(), x) if _kernel("grad_weight") == "mkl" else _mm_nt(g.t(), x.t())


def _kernel(kind: str) -> str:
    """The kernel of the gradient matmuls of ``kind`` on this machine: ``"onednn"`` or ``"mkl"``.

    Both operands of a gradient matmul reach the kernel transposed, and which library handles that
    faster depends on the CPU: on the AVX2 machine of benchmarks/README.md oneDNN does; on the
    AVX-512 + AMX one MKL's ``torch.mm`` does (the head's weight gradient 76 against 109 ms, its
    input gradient 52 against 60 ms, the MLP's weight gradient 2.1 against 2.6 ms). The choice is
    timed once per machine, CPU flags, torch version and thread count (``calibrate``) and kept in
    the cache directory, so that every run on the machine multiplies the same way and a resumed run
    matches the uninterrupted one bit for bit; where that file cannot be written, oneDNN.
    ``ANYPO_BACKWARD_MATMUL=onednn`` or ``mkl`` fixes it. Both are float32 products; they differ in
    summation order only.
    """
    mode = os.environ.get("ANYPO_BACKWARD_MATMUL", "auto")
    if mode not in BACKWARD_MATMUL:
        raise ValueError(f"ANYPO_BACKWARD_MATMUL must be one of {BACKWARD_MATMUL}, got {mode!r}")
    if mode != "auto":
        return mode
    global _machine
    if _machine is None:
        _machine = _machine_kernels()
    return _machine.get(kind, "onednn")


def _machine_key() -> str:
    from anypo.runs import cpu_info

    model, flags = cpu_info()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model or '?'}|{','.join(isa)}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def _machine_kernels() -> dict[str, str]:
    """This machine's choice from ``<cache>/matmul-kernels.json``, timed and written there (under a
    lock, so that concurrent first runs agree) when missing; oneDNN where the file cannot be used."""
    import json

    from anypo.models import _exclusive, cache_dir

    key = _machine_key()
    try:
        root = cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        path = root / "matmul-kernels.json"
        with _exclusive(root / ".matmul-kernels.lock"):
            known = json.loads(path.read_text()) if path.is_file() else {}
            if key not in known:
                known[key] = calibrate()
                tmp = path.with_suffix(f".tmp-{os.getpid()}")
                tmp.write_text(json.dumps(known, indent=1))
                os.replace(tmp, path)
            return dict(known[key])
    except (OSError, ValueError):
        return {}


def calibrate(rounds: int = 4) -> dict[str, str]:
    """Time oneDNN against MKL on the gradient matmuls of a small LM's MLP (384 tokens, 576 -> 1536):
    ``rounds`` alternating calls each, the first not counted; MKL where its median is >= 10% faster."""
    gen = torch.Generator().manual_seed(0)
    g, w, x = (torch.randn(384, 1536, generator=gen), torch.randn(1536, 576, generator=gen),
               torch.randn(384, 576, generator=gen))  # fmt: skip
    kernels = {
        "grad_input": (lambda: _mm_nt(g, w.t()), lambda: torch.mm(g, w)),
        "grad_weight": (lambda: _mm_nt(g.t(), x.t()), lambda: torch.mm(g.t(), x)),
    }
    out = {}
    for kind, (onednn_fn, mkl_fn) in kernels.items():
        times: dict[str, list[float]] = {"onednn": [], "mkl": []}
        for _ in range(rounds):
            for name, fn in (("onednn", onednn_fn), ("mkl", mkl_fn)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        fast = statistics.median(times["mkl"][1:]) < 0.9 * statistics.median(times["onednn"][1:])
        out[kind] = "mkl" if fast else "onednn"
    return out


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
