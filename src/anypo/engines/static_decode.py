"""Decoding a Llama-family causal LM over preallocated key/value buffers with fused projections.

The hf engine's generic path calls the model's own forward once per decode step: about 60 small
operations per layer, a ``torch.cat`` that grows every layer's key/value cache by one column, and
seven weight matrices per layer, each a separate matmul over a few rows. ``StaticDecoder`` runs
the same computation for the architectures it recognises (``supports``) with

- key/value buffers allocated once per ``generate`` call ([rows, kv_heads, prompt + max_new, head_dim]
  per layer), written in place; attention reads the filled prefix;
- q, k and v as one matmul and gate and up as one (four weight matrices per layer instead of seven),
  each multiplying a copy packed once per call into oneDNN's layout (float32, or bfloat16 for the
  bfloat16 engine);
- finished rows dropped from the buffers (their filled columns only).

Per layer it computes what ``LlamaDecoderLayer`` computes, in the same order and precision, calling
the model's own norm modules, rotary module and rotary function: RMSNorm, rotary embedding,
grouped-query scaled-dot-product attention over the unpadded keys, residual add, RMSNorm,
``down(silu(gate(x)) * up(x))``, residual add; then the final norm and the head. A
fused projection differs from three separate ones only in the matmul kernel's summation order
(float32 round-off, ~1e-6 relative), so the sampled tokens' log-probs stay the policy's within
float32 noise (tests/unit/test_engine.py compares them with a teacher-forced forward pass).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor

from anypo import onednn

SUPPORTED_TYPES = ("llama", "qwen2")
"""Decoder-only architectures whose layer is RMSNorm -> attention (q/k/v/o, optional q/k/v bias,
rotary) -> RMSNorm -> gated SiLU MLP, with the HF module names ``model.layers[i].self_attn.q_proj``..."""
_ROPE_TYPES = ("default", "linear", "llama3")  # inverse frequencies fixed at load (no per-length update)


def supports(model: torch.nn.Module) -> str | None:
    """None where ``StaticDecoder`` can decode ``model``; otherwise why not (the engine then calls the
    model's own forward at every step)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {SUPPORTED_TYPES}"
    body = getattr(model, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(model, "lm_head"):
        return "the model has no .model.layers / .lm_head (wrapped, for example by an adapter)"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act {cfg.hidden_act!r} is not silu"
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in _ROPE_TYPES:
        return f"rope_type {rope!r} changes with the sequence length"
    if getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention"
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        mods = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(type(m) is not torch.nn.Linear for m in mods):
            return "a projection is not a plain nn.Linear (for example a LoRA layer)"
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            return "query/key norms"
    if model.lm_head.weight.dtype != torch.float32 or model.lm_head.weight.device.type != "cpu":
        return "the weights are not float32 on the CPU"
    return None


class StaticDecoder:
    """Prefill B prompts, repeat them for n samples, then one token per row per ``step``.

    prefill(ids [B, P], attn [B, P]) -> logits [B, V] of the last prompt position (left padding);
    repeat(n) -> rows become B * n (prompt-major); step(tok [A]) -> logits [A, V] for the A rows
    still active; keep(idx [A']) -> only rows ``idx`` of the active ones stay (in that order; the engine
    passes ``hf._fill_from_tail``'s order, so that few rows move).
    """

    def __init__(self, model: torch.nn.Module, rows: int, max_len: int, dtype: torch.dtype = torch.float32):
        cfg = model.config
        body = model.model
        self.body, self.max_len = body, max_len
        # the architecture's own rotary function (q * cos + rotate_half(q) * sin), as its attention calls it
        self.apply_rotary = importlib.import_module(type(model).__module__).apply_rotary_pos_emb
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.q_size, self.kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        pack = _packer(rows, dtype)
        self.layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm,
                    pack([a.q_proj, a.k_proj, a.v_proj]),
                    pack([a.o_proj]),
                    layer.post_attention_layernorm,
                    pack([m.gate_proj, m.up_proj]),
                    pack([m.down_proj]),
                )
            )
        self.head = pack([model.lm_head])
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.valid: Tensor | None = None  # [A, max_len] bool: key column holds a real token of the row
        self.pos: Tensor | None = None  # [A] position id of the next token
        self.filled = 0  # key columns written so far (the same for every row)

    def prefill(self, ids: Tensor, attn: Tensor) -> Tensor:
        B, P = ids.shape
        shape = (B, self.n_kv, self.max_len, self.head_dim)
        self.keys = [torch.empty(shape) for _ in self.layers]
        self.values = [torch.empty(shape) for _ in self.layers]
        self.valid = torch.zeros((B, self.max_len), dtype=torch.bool)
        self.valid[:, :P] = attn.bool()
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        self.pos = pos[:, -1] + 1
        return self._forward(ids, pos)

    def repeat(self, n: int) -> None:
        c = self.filled
        for buffers in (self.keys, self.values):
            for i, buf in enumerate(buffers):
                new = torch.empty((buf.shape[0] * n, *buf.shape[1:]))
                new[:, :, :c] = buf[:, :, :c].repeat_interleave(n, 0)
                buffers[i] = new
        self.valid = self.valid.repeat_interleave(n, 0)
        self.pos = self.pos.repeat_interleave(n, 0)

    def keep(self, idx: Tensor) -> None:
        c = self.filled
        moved = (idx != torch.arange(len(idx))).nonzero().flatten()  # rows that change place
        src = idx[moved]
        for buffers in (self.keys, self.values):
            for buf in buffers:
                buf[moved, :, :c] = buf[src, :, :c]  # the right side is a copy: no overlap hazard
        self.valid = self.valid[idx]
        self.pos = self.pos[idx]

    def step(self, tok: Tensor) -> Tensor:
        A = len(tok)
        self.valid[:A, self.filled] = True
        pos = self.pos[:, None]
        self.pos = self.pos + 1
        return self._forward(tok[:, None], pos)

    def _forward(self, ids: Tensor, pos: Tensor) -> Tensor:
        """ids, pos [A, S] -> logits [A, V] of the last of the S new positions; writes their keys and values."""
        A, S = ids.shape
        c0, c1 = self.filled, self.filled + S
        h = self.body.embed_tokens(ids)
        cos, sin = self.body.rotary_emb(h, pos)  # [A, S, D]
        mask = self.valid[:A, None, None, :c1]  # [A, 1, 1, c1]
        if S > 1:  # prefill: causal within the new positions too, and every query sees itself, so
            # that a left-padding query (no real key before it) gets finite junk instead of NaN
            causal = torch.ones((S, c1), dtype=torch.bool).tril(c0)
            own = torch.zeros((S, c1), dtype=torch.bool)
            own[:, c0:c1] = torch.eye(S, dtype=torch.bool)
            mask = (mask & causal) | own
        D, H, K = self.head_dim, self.n_heads, self.n_kv
        for i, (ln1, qkv_w, o_w, ln2, gu_w, down_w) in enumerate(self.layers):
            x = ln1(h)
            qkv = _linear(x, *qkv_w)
            q = qkv[..., : self.q_size].view(A, S, H, D).transpose(1, 2)
            k = qkv[..., self.q_size : self.q_size + self.kv_size].view(A, S, K, D).transpose(1, 2)
            v = qkv[..., self.q_size + self.kv_size :].view(A, S, K, D).transpose(1, 2)
            q, k = self.apply_rotary(q, k, cos, sin)  # cos, sin broadcast over the heads (dim 1)
            self.keys[i][:A, :, c0:c1] = k
            self.values[i][:A, :, c0:c1] = v
            o = F.scaled_dot_product_attention(
                q, self.keys[i][:A, :, :c1], self.values[i][:A, :, :c1], attn_mask=mask, enable_gqa=K != H
            )
            h = h + _linear(o.transpose(1, 2).reshape(A, S, H * D), *o_w)
            x = ln2(h)
            gu = _linear(x, *gu_w)
            inter = gu.shape[-1] // 2
            h = h + _linear(F.silu(gu[..., :inter]) * gu[..., inter:], *down_w)
        self.filled = c1
        last = self.body.norm(h[:, -1])
        return _linear(last, *self.head).float()


def _packer(rows: int, dtype: torch.dtype):
    """Concatenate the weights (and biases) of ``linears`` along the output dimension, packed for oneDNN."""

    def pack(linears: list[torch.nn.Linear]) -> tuple[Tensor, Tensor | None, bool]:
        w = torch.cat([m.weight.detach() for m in linears]) if len(linears) > 1 else linears[0].weight.detach()
        bias = None
        if any(m.bias is not None for m in linears):  # Qwen2's q/k/v biases
            bias = torch.cat(
                [m.weight.new_zeros(m.out_features) if m.bias is None else m.bias.detach() for m in linears]
            )
        if onednn.available():
            return torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), rows), bias, True
        return w.to(dtype), bias, False

    return pack


def _linear(x: Tensor, w: Tensor, bias: Tensor | None, packed: bool) -> Tensor:
    if packed:
        return onednn._linear_nograd(x, w, bias)
    y = F.linear(x.to(w.dtype), w).float()
    return y + bias if bias is not None else y
