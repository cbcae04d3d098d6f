"""In-process generation with a Hugging Face causal LM and a KV cache.

Unlike ``model.generate`` this loop (1) runs the prompt once per prompt, not once per sample: the
prompt's KV cache is computed for B prompts and then repeated for their n samples; (2) drops finished
sequences from the batch so late steps cost only what is still being written; (3) returns the
log-probability of every sampled token without keeping [N, T, V] scores; (4) multiplies by weights
packed once per call into oneDNN's layout (``anypo.onednn.packed_weights``) instead of on every layer
of every decode step; (5) for Llama and Qwen2 models on the CPU, decodes with
``static_decode.StaticDecoder`` (preallocated key/value buffers, fused q/k/v and gate/up matmuls)
instead of the model's own forward. ``precision="bf16"`` packs bfloat16 copies instead: the decode matmuls run in
bfloat16 (about 3.6x faster on a CPU with AMX, slower on one without AVX-512 BF16), the sampled
tokens' log-probs are then not the float32 policy's, and ``logprobs_exact`` says so.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from anypo import onednn
from anypo.engines import static_decode
from anypo.engines.base import Generation, SamplingConfig


class HFEngine:
    """Samples from ``model`` itself, so the engine always has the trainer's current weights."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        static: bool = True,
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"HFEngine precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        self.static = static and torch.device(device).type == "cpu"
        """Decode with ``static_decode.StaticDecoder`` where the architecture allows (otherwise, or with
        False, the model's own forward and a ``DynamicCache`` at every step)."""
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.config.eos_token_id if hasattr(model, "config") else tokenizer.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        self.eos_ids = torch.tensor(sorted({i for i in [*eos_ids, tokenizer.eos_token_id, im_end] if i is not None}))

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Nothing to copy: this engine samples from the policy module being trained."""

    def logprobs_exact(self, sampling: SamplingConfig) -> bool:
        """The float32 engine's log-probs are the policy's; the bfloat16 matmuls' are not (the trainer
        recomputes the old log-probs then)."""
        return self.precision == "fp32"

    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int | None = None
    ) -> Generation:
        """Sample ``n`` completions for each prompt (token ids, no padding)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        was_training = self.model.training
        self.model.eval()
        try:
            # inference mode skips autograd's view and version tracking on every op of the decode loop
            with torch.inference_mode():
                out = self._generate(prompts, n, sampling, gen)
        finally:
            self.model.train(was_training)
        # ordinary tensors again: the trainer uses them next to tensors that require grad
        return Generation(**{f.name: getattr(out, f.name).clone() for f in dataclasses.fields(out)})

    def _generate(self, prompts: list[list[int]], n: int, s: SamplingConfig, gen: torch.Generator | None) -> Generation:
        B, P = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: the last column is every prompt's last token
            ids[b, P - len(p) :] = torch.tensor(p)
            attn[b, P - len(p) :] = 1
        N, T = B * n, s.max_new_tokens
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        with contextlib.ExitStack() as stack:
            if self.static and static_decode.supports(self.model) is None:
                decoder = static_decode.StaticDecoder(self.model, N, P + T, dtype)
            else:
                stack.enter_context(onednn.packed_weights(self.model, N, dtype=dtype))
                decoder = _CacheDecoder(self.model, self.device)
            return self._decode(decoder, ids, attn, n, s, gen)

    def _decode(self, decoder, ids: Tensor, attn: Tensor, n: int, s: SamplingConfig, gen) -> Generation:
        B = len(ids)
        N, T = B * n, s.max_new_tokens
        logits = decoder.prefill(ids, attn).float().repeat_interleave(n, 0)  # [N, V]
        decoder.repeat(n)  # the prompt is processed once, then its keys and values are repeated
        resp = torch.full((N, T), self.pad_id, dtype=torch.long)
        lps = torch.zeros((N, T))
        lengths = torch.zeros(N, dtype=torch.long)
        stopped = torch.zeros(N, dtype=torch.bool)
        active = torch.arange(N)  # rows of the full batch still being written, in decoder order
        eos = self.eos_ids.to(self.device)
        for t in range(T):
            tok, lp = _sample(logits, s, gen)  # [A], [A]
            rows = active
            resp[rows, t] = tok.cpu()
            lps[rows, t] = lp.cpu()
            lengths[rows] = t + 1
            done = torch.isin(tok, eos).cpu()
            if s.stop:
                done |= self._hit_stop(resp[rows, : t + 1], lengths[rows], s.stop)
            stopped[rows[done]] = True
            if t == T - 1 or bool(done.all()):
                break
            if bool(done.any()):  # shrink the batch: finished rows cost nothing from now on
                keep = _fill_from_tail(done)
                decoder.keep(keep.to(self.device))
                tok = tok[keep.to(self.device)]
                active = rows[keep]
            logits = decoder.step(tok).float()
        Tn = int(lengths.max()) if N else 0
        mask = (torch.arange(Tn)[None, :] < lengths[:, None]).long()
        return Generation(
            prompt_index=torch.arange(B).repeat_interleave(n),
            response_ids=resp[:, :Tn],
            response_mask=mask,
            logprobs=lps[:, :Tn] * mask,
            truncated=~stopped,
        )

    def _hit_stop(self, resp: Tensor, lengths: Tensor, stops: tuple[str, ...]) -> Tensor:
        """[A] True where the last few decoded tokens of a row contain a stop string."""
        hit = torch.zeros(len(resp), dtype=torch.bool)
        for i in range(len(resp)):
            tail = self.tokenizer.decode(resp[i, max(0, int(lengths[i]) - 8) : int(lengths[i])])
            hit[i] = any(stop in tail for stop in stops)
        return hit


def _fill_from_tail(done: Tensor) -> Tensor:
    """The rows that stay after dropping the ``done`` ones [A] bool, as indices into the current rows
    [A']: a row that stays keeps its place unless it is past A', and the last rows that stay move
    into the places of the finished ones before A'. So a decoder's ``keep`` moves one row per finished
    row instead of every row after the first finished one (the key/value buffers of all layers).

    done [F, T, F, T, F, F] -> [0, 5, 2, 4]: rows 0 and 2 stay in place, 5 and 4 fill places 1 and 3.
    """
    stay = (~done).nonzero().flatten()
    n = len(stay)
    idx = torch.arange(n)
    holes = done[:n].nonzero().flatten()  # places before n whose row finished
    idx[holes] = stay[stay >= n].flip(0)[: len(holes)]  # as many rows that stay sit at or past n
    return idx


def _sample(logits: Tensor, s: SamplingConfig, gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw one token per row; return it and its log-prob under softmax(logits / temperature).

    logits: [A, V] -> tokens [A], logprobs [A]
    """
    if s.temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling; for greedy decoding use a small value like 1e-4")
    scaled = logits if s.temperature == 1.0 else logits / s.temperature
    truncate_k = 0 < s.top_k < scaled.shape[-1]
    if not truncate_k and s.top_p >= 1.0:  # the full softmax: one exp over the vocabulary
        m = scaled.amax(-1, keepdim=True)
        weights = (scaled - m).exp_()  # unnormalised probabilities; their sum is the CDF's last entry
        tok, total = _draw(weights.cpu(), gen)
        tok = tok.to(logits.device)
        logz = m.squeeze(-1) + total.log().to(m)  # log sum exp(scaled), the sum taken in float64
        return tok, scaled.gather(-1, tok[:, None]).squeeze(-1) - logz
    logp = F.log_softmax(scaled, dim=-1)  # the policy the trainer scores (no truncation)
    filtered = scaled
    if truncate_k:
        kth = torch.topk(filtered, s.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > s.top_p  # keep the smallest prefix reaching top_p
        filtered = filtered.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    tok = _categorical(filtered.softmax(-1).cpu(), gen).to(logits.device)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def _categorical(probs: Tensor, gen: torch.Generator | None) -> Tensor:
    """One draw per row of ``probs`` [A, V] (rows need not sum to 1); see ``_draw``."""
    return _draw(probs, gen)[0]


def _draw(probs: Tensor, gen: torch.Generator | None, block: int = 256) -> tuple[Tensor, Tensor]:
    """One draw per row of ``probs`` [A, V] (rows need not sum to 1) by inverting the CDF.

    Token v is drawn when ``cdf[v-1] <= u < cdf[v]`` for ``u ~ U[0, cdf[-1])``, which has probability
    ``probs[v] / sum(probs)``; a zero-probability token has an empty interval and is never drawn.
    One uniform per row (``torch.multinomial`` spends 12 ms per decode step of 32 rows over a 49k
    vocabulary drawing an exponential for every entry), and the CDF in two levels, both in float64:
    the sums of blocks of ``block`` tokens first, then the cumulative sum inside the one block ``u``
    falls in. The same intervals as one float64 cumulative sum over the vocabulary up to float64
    round-off, without converting and summing all [A, V] entries in float64 (2.1 of 2.8 ms per decode
    step of 16 rows over 49k tokens). Returns the tokens [A] and each row's sum of ``probs`` [A] (float64).
    """
    A, V = probs.shape
    nb = -(-V // block)
    padded = probs if nb * block == V else F.pad(probs, (0, nb * block - V))  # padding has probability 0
    blocks = padded.reshape(A, nb, block)
    bcdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # [A, nb]
    u = torch.rand(A, 1, generator=gen, dtype=torch.float64) * bcdf[:, -1:]
    j = torch.searchsorted(bcdf, u, right=True).clamp_(max=nb - 1)  # [A, 1] the block u falls in
    start = torch.where(j > 0, bcdf.gather(-1, (j - 1).clamp(min=0)), 0.0)
    inner = blocks[torch.arange(A), j.squeeze(-1)].double().cumsum(-1)  # [A, block]
    k = torch.searchsorted(inner, u - start, right=True).clamp_(max=block - 1)
    tok = (j * block + k).squeeze(-1).clamp_(max=V - 1)
    bad = probs.gather(-1, tok[:, None]).squeeze(-1) <= 0  # u rounded onto an interval's end (~1e-16)
    if bool(bad.any()):  # take the last token with mass instead
        tok[bad] = V - 1 - (probs[bad].flip(-1) > 0).int().argmax(-1)
    return tok, bcdf[:, -1]


class _CacheDecoder:
    """The decoder interface of ``static_decode.StaticDecoder`` over the model's own forward and its
    ``DynamicCache`` (any causal LM)."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device

    def prefill(self, ids: Tensor, attn: Tensor) -> Tensor:
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            position_ids=pos.to(self.device),
            use_cache=True,
            logits_to_keep=1,  # only the last prompt position predicts: no [B, P, V] logits
        )
        self.cache, self.attn, self.pos = out.past_key_values, attn.to(self.device), pos[:, -1:].to(self.device) + 1
        return out.logits[:, -1]

    def repeat(self, n: int) -> None:
        self.cache.batch_repeat_interleave(n)  # [B, ...] -> [B*n, ...]
        self.attn, self.pos = self.attn.repeat_interleave(n, 0), self.pos.repeat_interleave(n, 0)

    def keep(self, idx: Tensor) -> None:
        self.cache.batch_select_indices(idx)
        self.attn, self.pos = self.attn[idx], self.pos[idx]

    def step(self, tok: Tensor) -> Tensor:
        self.attn = torch.cat([self.attn, self.attn.new_ones((len(tok), 1))], dim=1)
        out = self.model(
            input_ids=tok[:, None],
            attention_mask=self.attn,
            position_ids=self.pos,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache, self.pos = out.past_key_values, self.pos + 1
        return out.logits[:, -1]
