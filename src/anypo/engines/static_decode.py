"""A decode loop for Llama-family models with a preallocated KV cache.

The Hugging Face forward with a ``DynamicCache`` grows every layer's keys and values by concatenation
at each decoding step, builds a 4-D attention mask per step, and runs the CPU flash-attention kernel
for one query per row; dropping finished rows copies the whole cache. Here the prompt is processed
once, its keys and values written into buffers sized for the whole response, and each decoding step
writes one column in place and attends with two small batched matmuls. Finished rows keep their
buffer rows (their outputs are not read) until a quarter of the rows has finished, then the buffers
are compacted: one copy instead of one per finishing step.

The layers' own modules (norms, projections, MLP, rotary embedding) do the math, so the function is
the model's; attention differs from the model's kernel only in summation order. Models whose layers
do something else (sliding windows, query/key norms, LoRA wrappers) take the Hugging Face path:
``supports(model)`` says which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORTED = {"LlamaForCausalLM", "Qwen2ForCausalLM"}
COMPACT_BELOW = 0.75  # compact the buffers once fewer than this share of their rows is still active


def supports(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a plain Llama / Qwen2 causal LM whose decoding this module reproduces."""
    if type(model).__name__ not in SUPPORTED:
        return False
    cfg = model.config
    if getattr(cfg, "use_sliding_window", False) or any(
        t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()
    ):
        return False
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        return False
    attn = layers[0].self_attn
    needed = ("q_proj", "k_proj", "v_proj", "o_proj")
    return all(type(getattr(attn, n, None)) is torch.nn.Linear for n in needed) and not hasattr(attn, "q_norm")


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticDecoder:
    """Prompt pass and one-token decoding steps over preallocated [rows, kv_heads, capacity, head_dim]
    key and value buffers (one pair per layer).

    Rows are addressed by *slots*: ``prefill`` gives each of the B x n rows its slot; ``select(keep)``
    keeps the listed active rows (indices into the current active list) and compacts the buffers only
    when the active rows fall below ``COMPACT_BELOW`` of the buffer's rows; ``step(tokens)`` takes one
    token per active row and returns their next-token logits.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        cfg = model.config
        self.layers = model.model.layers[: cfg.num_hidden_layers]
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5

    def prefill(self, ids: Tensor, attn: Tensor, pos: Tensor, n: int, capacity: int) -> Tensor:
        """Run the left-padded prompts ``ids`` [B, P] once; return the last position's logits repeated
        to [B * n, V]. ``capacity`` is the number of tokens each row may still write."""
        B, P = ids.shape
        self.valid = torch.zeros(B * n, P + capacity, dtype=torch.bool, device=ids.device)  # keys a row may see
        self.valid[:, :P] = attn.bool().repeat_interleave(n, 0)
        self.col = P  # the column the next token's key and value go to (the same for every row)
        self.pos = pos[:, -1].repeat_interleave(n, 0) + 1  # [B * n] position of each row's next token
        self.slots = torch.arange(B * n, device=ids.device)  # buffer row of each active row
        causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        mask = causal[None] & attn.bool()[:, None, :]  # [B, P(query), P(key)]
        mask |= torch.eye(P, dtype=torch.bool, device=ids.device)[None]  # padded queries see themselves
        dtype = self.model.model.embed_tokens.weight.dtype
        self.k = [ids.new_zeros((B * n, self.n_kv, P + capacity, self.head_dim), dtype=dtype) for _ in self.layers]
        self.v = [torch.zeros_like(k) for k in self.k]

        x = self.model.model.embed_tokens(ids)  # [B, P, H]
        cos, sin = self.model.model.rotary_emb(x, position_ids=pos)  # [B, P, d]
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            q, k, v = self._qkv(layer.self_attn, h, cos[:, None], sin[:, None])  # [B, heads, P, d]
            self.k[i][:, :, :P] = k.repeat_interleave(n, 0)
            self.v[i][:, :, :P] = v.repeat_interleave(n, 0)
            o = self._attend(q, k, v, mask)  # [B, P, heads * d]
            x = x + layer.self_attn.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = self.model.model.norm(x[:, -1])
        return self.model.lm_head(last).float().repeat_interleave(n, 0)

    def select(self, keep: Tensor) -> None:
        """Keep the active rows at positions ``keep`` (ascending) of the current active list."""
        self.slots, self.pos = self.slots[keep], self.pos[keep]
        rows = self.k[0].shape[0]
        if len(self.slots) < COMPACT_BELOW * rows:
            s = self.slots
            self.k = [k[s] for k in self.k]
            self.v = [v[s] for v in self.v]
            self.valid = self.valid[s]
            self.slots = torch.arange(len(s), device=s.device)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per active row [A]; return the next-token logits [A, V] (float32)."""
        R, c = self.k[0].shape[0], self.col
        full = torch.zeros(R, dtype=torch.long, device=tokens.device)  # finished rows decode a dummy token
        full[self.slots] = tokens
        pos = torch.zeros(R, dtype=torch.long, device=tokens.device)
        pos[self.slots] = self.pos
        self.valid[:, c] = True
        x = self.model.model.embed_tokens(full[:, None])  # [R, 1, H]
        cos, sin = self.model.model.rotary_emb(x, position_ids=pos[:, None])
        mask = self.valid[:, None, : c + 1]  # [R, 1(query), c + 1(key)]
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            q, k, v = self._qkv(layer.self_attn, h, cos[:, None], sin[:, None])  # [R, heads, 1, d]
            self.k[i][:, :, c : c + 1] = k
            self.v[i][:, :, c : c + 1] = v
            o = self._attend(q, self.k[i][:, :, : c + 1], self.v[i][:, :, : c + 1], mask)
            x = x + layer.self_attn.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.col, self.pos = c + 1, self.pos + 1
        h = self.model.model.norm(x[self.slots, -1])
        return self.model.lm_head(h).float()

    def _qkv(self, attn, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        R, Q, _ = h.shape
        q = attn.q_proj(h).view(R, Q, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(R, Q, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(R, Q, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """softmax(q k^T * scaling, masked) v with grouped heads: q [R, H, Q, d], k and v [R, KV, L, d],
        mask [R, Q, L] -> [R, Q, H * d]."""
        R, H, Q, d = q.shape
        g = H // self.n_kv
        qg = q.reshape(R, self.n_kv, g * Q, d)  # the g query heads sharing a key head, stacked
        scores = torch.matmul(qg, k.transpose(-1, -2)).view(R, self.n_kv, g, Q, -1) * self.scaling
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
        p = F.softmax(scores.float(), dim=-1).to(v.dtype).view(R, self.n_kv, g * Q, -1)
        o = torch.matmul(p, v).view(R, H, Q, d)
        return o.transpose(1, 2).reshape(R, Q, H * d)
