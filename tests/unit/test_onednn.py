"""The oneDNN float32 linear: same function and gradients as F.linear, fallbacks where it does not apply."""

import pytest
import torch
import torch.nn.functional as F

from anypo import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear")


def _float64_reference(x, w, b, up):
    """y = x W^T + b and the gradients of sum(y * up), computed in float64 by autograd on F.linear."""
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    b64 = b.double().requires_grad_() if b is not None else None
    y = F.linear(x64, w64, b64)
    grads = torch.autograd.grad((y * up.double()).sum(), [t for t in (x64, w64, b64) if t is not None])
    return y, grads


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5), (1, 5)])
def test_linear_matches_float64_values_and_gradients(shape, bias):
    """Values and the gradients w.r.t. x, W and b agree with a float64 F.linear to float32 precision
    (the sums have 5 to 21 terms of size ~1: errors of a few 1e-7)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = torch.randn(4, 5, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True) if bias else None
    up = torch.randn(*shape[:-1], 4, generator=g)
    y = onednn.linear(x, w, b)
    grads = torch.autograd.grad((y * up).sum(), [t for t in (x, w, b) if t is not None])
    y_ref, grads_ref = _float64_reference(x, w, b, up)
    assert y.dtype == torch.float32 and y.shape == (*shape[:-1], 4)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_no_grad_path_and_strided_operands():
    """Without grad the kernel is called directly; transposed (strided) operands give a @ b^T."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 3, generator=g), torch.randn(3, 4, generator=g)  # b.t() is a strided [4, 3] view
    with torch.no_grad():
        torch.testing.assert_close(onednn.linear(a, b.t()), a @ b)
    torch.testing.assert_close(onednn.mm_nt(a.t().contiguous().t(), b.t()), a @ b)


def test_falls_back_to_f_linear_outside_float32_cpu():
    """float64 (gradient checks) and bfloat16 autocast take F.linear: float64 stays exact, autocast
    gives a bfloat16 result as F.linear would."""
    x, w = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(onednn.linear(x, w), F.linear(x, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn.linear(x.float(), w.float()).dtype == torch.bfloat16


def test_use_onednn_keeps_the_model_function_and_state(tiny_model):
    """Routing a model's linears through oneDNN changes neither its state dict nor (beyond float32
    rounding) its logits and gradients."""
    import copy

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    plain = copy.deepcopy(tiny_model)
    for m in plain.modules():  # undo any routing the fixture's loader applied
        m.__dict__.pop("forward", None)
    routed = copy.deepcopy(plain)
    n = onednn.use_onednn(routed)
    assert n == sum(type(m) is torch.nn.Linear for m in plain.modules()) > 0
    assert routed.state_dict().keys() == plain.state_dict().keys()
    out = []
    for model in (plain, routed):
        model.zero_grad()
        logits = model(ids).logits
        logits.square().mean().backward()
        out.append((logits.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(out[0][1], out[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_weights_give_the_same_products_and_leave_nothing_behind():
    """Inside ``packed_weights`` a routed layer multiplies by its blocked copy: same values as a float64
    F.linear to float32 precision, for row counts other than the one packed for; autograd still takes
    the plain weight (a gradient reaches W); on exit the copies are gone. A layer not routed by
    ``use_onednn`` is not packed."""
    g = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3, bias=False), torch.nn.Linear(3, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    onednn.use_onednn(model[:2])  # the last layer stays on F.linear
    x = torch.randn(9, 6, generator=g)
    want = F.linear(F.linear(x.double(), model[0].weight.double(), model[0].bias.double()), model[1].weight.double())
    with onednn.packed_weights(model, rows=4) as n:
        assert n == 2
        assert all(m.__dict__["_anypo_onednn_packed"].is_mkldnn for m in model[:2])
        assert "_anypo_onednn_packed" not in model[2].__dict__
        for rows in (1, 4, 9):
            with torch.no_grad():
                got = model[1](model[0](x[:rows]))
            torch.testing.assert_close(got.double(), want[:rows], atol=1e-5, rtol=1e-5)
        model[1](x[:, :5]).sum().backward()  # grad enabled: the plain weight, so W gets a gradient
        torch.testing.assert_close(model[1].weight.grad, x[:, :5].sum(0).expand(3, 5), atol=1e-5, rtol=1e-5)
    assert all("_anypo_onednn_packed" not in m.__dict__ for m in model)


@pytest.mark.skipif(not onednn.available(), reason="oneDNN linear not available in this build")
def test_bfloat16_packed_products_round_inputs_and_weights_to_bfloat16():
    """``packed_weights(dtype=torch.bfloat16)``: the product of the bfloat16-rounded input and weight,
    rounded to bfloat16 and returned as float32, the bias added in float32. By hand: bfloat16 keeps 8
    significant bits, so 1 + 2^-6 is exact and 1 + 2^-9 rounds to 1. With x = [1 + 2^-9, 1] and
    W = [[1 + 2^-6, 2], [0.5, -1]] the bf16 product is [1 * (1 + 2^-6) + 2, 0.5 - 1] = [3.015625, -0.5]
    (exact: bfloat16's step in [2, 4) is 2^-6), plus the bias [2^-12, 0] added in float32:
    [3.015625 + 2^-12, -0.5]. The float32 layer gives (1 + 2^-9)(1 + 2^-6) + 2 + 2^-12 instead.
    Integer-valued inputs and weights with small integer products are exact in bfloat16 and give the
    float32 result exactly."""
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1 + 2**-6, 2.0], [0.5, -1.0]]))
        layer.bias.copy_(torch.tensor([2**-12, 0.0]))
    onednn.use_onednn(layer)
    x = torch.tensor([[1 + 2**-9, 1.0]])
    with torch.no_grad():
        fp32 = layer(x)
        with onednn.packed_weights(layer, rows=1, dtype=torch.bfloat16) as n:
            assert n == 1 and layer.__dict__["_anypo_onednn_packed"].dtype == torch.bfloat16
            bf = layer(x)
    assert bf.dtype == torch.float32
    assert bf.tolist() == [[3.015625 + 2**-12, -0.5]]
    assert fp32[0, 0].item() == pytest.approx((1 + 2**-9) * (1 + 2**-6) + 2 + 2**-12, abs=1e-6)
    assert fp32[0, 0].item() != bf[0, 0].item()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        layer.bias.zero_()
        with onednn.packed_weights(layer, rows=2, dtype=torch.bfloat16):
            ints = layer(torch.tensor([[2.0, -3.0], [1.0, 4.0]]))
    assert ints.tolist() == [[-4.0, 9.0], [9.0, -1.0]]
    assert "_anypo_onednn_packed" not in layer.__dict__
    with pytest.raises(ValueError, match="dtype"), onednn.packed_weights(layer, rows=1, dtype=torch.float16):
        pass


def test_generation_is_the_same_with_and_without_packed_weights(tiny_model, tokenizer, monkeypatch):
    """The engine's packing changes no token and no log-prob: the same seed gives the same sample with
    the packing replaced by a no-op context."""
    import contextlib

    from anypo.engines.base import SamplingConfig
    from anypo.engines.hf import HFEngine

    onednn.use_onednn(tiny_model)
    engine = HFEngine(tiny_model, tokenizer)
    prompts, s = [[5, 6, 7], [8, 9, 10, 11, 12]], SamplingConfig(temperature=1.0, max_new_tokens=12)
    packed = engine.generate(prompts, 3, s, seed=7)
    monkeypatch.setattr(onednn, "packed_weights", lambda model, rows, dtype=None: contextlib.nullcontext(0))
    plain = engine.generate(prompts, 3, s, seed=7)
    assert torch.equal(packed.response_ids, plain.response_ids)
    torch.testing.assert_close(packed.logprobs, plain.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["auto", "onednn", "mkl"])
def test_gradient_matmuls_compute_g_w_and_g_transposed_x_on_either_kernel(mode, monkeypatch, tmp_path):
    """``grad_input(g, W) = g @ W`` and ``grad_weight(g, x) = g^T @ x`` against float64 products, with the
    kernel fixed to oneDNN or MKL, or this machine's timed choice (``auto``). Sums of 256-512 terms
    of size ~1: float32 errors ~1e-5. With ``mkl`` the result is ``torch.mm``'s, bit for bit."""
    monkeypatch.setenv("ANYPO_BACKWARD_MATMUL", mode)
    monkeypatch.setenv("ANYPO_CACHE", str(tmp_path))
    monkeypatch.setattr(onednn, "_machine", None)
    gen = torch.Generator().manual_seed(0)
    g, w, x = (torch.randn(300, 512, generator=gen), torch.randn(512, 256, generator=gen),
               torch.randn(300, 256, generator=gen))  # fmt: skip
    torch.testing.assert_close(onednn.grad_input(g, w), (g.double() @ w.double()).float(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(onednn.grad_weight(g, x), (g.double().t() @ x.double()).float(), atol=1e-4, rtol=1e-5)
    if mode == "mkl":
        assert torch.equal(onednn.grad_weight(g, x), torch.mm(g.t(), x))
        assert torch.equal(onednn.grad_input(g, w), torch.mm(g, w))


def test_the_machines_kernel_choice_is_timed_once_and_shared_through_the_cache(monkeypatch, tmp_path):
    """The first process on a machine times the kernels and writes the choice under a key naming the
    CPU, its flags, torch and the thread count; every later process reads it (no timing: runs on a
    machine multiply alike, so a resumed run matches). A cache that cannot be written means oneDNN.
    A wrong ``ANYPO_BACKWARD_MATMUL`` is refused."""
    import json

    monkeypatch.delenv("ANYPO_BACKWARD_MATMUL", raising=False)
    monkeypatch.setenv("ANYPO_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(onednn, "calibrate", lambda: calls.append(1) or {"grad_input": "mkl", "grad_weight": "onednn"})
    monkeypatch.setattr(onednn, "_machine", None)
    assert onednn._kernel("grad_input") == "mkl" and onednn._kernel("grad_weight") == "onednn"
    saved = json.loads((tmp_path / "matmul-kernels.json").read_text())
    (key,) = saved
    assert key == onednn._machine_key() and f"{torch.get_num_threads()} threads" in key
    monkeypatch.setattr(onednn, "_machine", None)  # a new process
    assert onednn._kernel("grad_input") == "mkl" and calls == [1]
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("ANYPO_CACHE", str(blocked / "sub"))  # under a file: cannot be created
    monkeypatch.setattr(onednn, "_machine", None)
    assert onednn._kernel("grad_input") == "onednn"
    monkeypatch.setenv("ANYPO_BACKWARD_MATMUL", "blas")
    with pytest.raises(ValueError, match="ANYPO_BACKWARD_MATMUL"):
        onednn.grad_weight(torch.randn(300, 512), torch.randn(300, 256))


def test_calibrate_names_a_kernel_for_each_gradient_kind():
    """The timing itself (real kernels): one choice per kind, each oneDNN or MKL."""
    chosen = onednn.calibrate(rounds=2)
    assert set(chosen) == {"grad_input", "grad_weight"} and set(chosen.values()) <= {"onednn", "mkl"}
