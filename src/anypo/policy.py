"""The trainer's view of a causal LM: log-probabilities of response tokens, values, reference passes."""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from anypo.ops import entropy_from_logits, last_token_index, linear_logprobs, logprobs_from_logits
from anypo.types import PolicyOutput, RolloutBatch


def _inputs(batch: RolloutBatch) -> tuple[Tensor, Tensor, Tensor, int]:
    """Concatenate left-padded prompts and right-padded responses: ids, mask, positions, T."""
    prompt_ids = batch.require("prompt_ids", "the rollout fills it")
    prompt_mask = batch.require("prompt_mask", "the rollout fills it")
    resp_ids = batch.require("response_ids", "the rollout fills it")
    ids = torch.cat([prompt_ids, resp_ids], dim=1)  # [N, P + T]
    attn = torch.cat([prompt_mask, batch.response_mask.to(prompt_mask.dtype)], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos, resp_ids.shape[1]


def _padded_response_logits(model: torch.nn.Module, batch: RolloutBatch) -> Tensor:
    """[N, T, V] logits predicting each response token, one padded row per sequence (the unpacked fallback)."""
    ids, attn, pos, T = _inputs(batch)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1, use_cache=False)
    return out.logits[:, :-1]  # position P-1+t predicts response token t


@dataclasses.dataclass
class Packed:
    """Rows that share a prompt, packed into one sequence: ``[prompt, response_1, ..., response_k]``.

    Each response attends to the shared prompt and to its own earlier tokens only (a block mask), and
    keeps the positions it had after its prompt, so every response token sees exactly the context it
    was sampled with. The prompt then runs once per distinct prompt instead of once per sample, and
    no compute is spent on padding inside a sequence.

    Attributes:
        ids: [R, L] packed token ids (R distinct prompts, L the longest packed sequence).
        positions: [R, L] position ids.
        attention: [R, 1, L, L] bool, True where query position q may attend to key position k.
        source: [n] index into the flattened [R * L] hidden states of the state that predicts each
            response token, in row-major order of ``batch.response_mask`` (n = its sum).
    """

    ids: Tensor
    positions: Tensor
    attention: Tensor
    source: Tensor


def pack_by_prompt(batch: RolloutBatch) -> Packed:
    """Pack the rows of ``batch`` by distinct prompt (see ``Packed``).

    A response runs up to its last masked token; unmasked tokens before it (tool output in a
    multi-turn rollout) stay in the context, and only masked tokens get a prediction in ``source``.
    """
    prompt_ids = batch.require("prompt_ids", "the rollout fills it")
    prompt_mask = batch.require("prompt_mask", "the rollout fills it").bool()
    resp_ids = batch.require("response_ids", "the rollout fills it")
    mask = batch.response_mask.bool()
    cols = torch.arange(mask.shape[1]).expand_as(mask)
    lengths = torch.where(mask, cols + 1, 0).amax(1).tolist() if mask.numel() else [0] * batch.num_seqs
    # rows with the same prompt tokens share a packed sequence (group ids are not trusted for this)
    keys = torch.where(prompt_mask, prompt_ids, -1)
    _, which = torch.unique(keys, dim=0, return_inverse=True)  # [N]
    seqs: list[list[Tensor]] = [[] for _ in range(int(which.max()) + 1 if len(which) else 0)]
    segs: list[list[Tensor]] = [[] for _ in seqs]
    poss: list[list[Tensor]] = [[] for _ in seqs]
    starts: list[int] = [0] * len(seqs)
    pred: list[tuple[int, int, int]] = []  # per row: packed row, position predicting token 0, start of response
    for i in range(batch.num_seqs):
        r = int(which[i])
        if not seqs[r]:
            p = prompt_ids[i][prompt_mask[i]]
            seqs[r].append(p)
            segs[r].append(torch.zeros(len(p), dtype=torch.long))
            poss[r].append(torch.arange(len(p)))
            starts[r] = len(p)
        P, n = int(prompt_mask[i].sum()), int(lengths[i])
        pred.append((r, P - 1, starts[r]))
        seqs[r].append(resp_ids[i, :n])
        segs[r].append(torch.full((n,), len(segs[r]), dtype=torch.long))
        poss[r].append(torch.arange(P, P + n))
        starts[r] += n
    R, L = len(seqs), max(starts, default=0)
    ids = torch.zeros((R, L), dtype=torch.long)  # padding id: never attended to by a real token
    positions = torch.zeros((R, L), dtype=torch.long)
    seg = torch.full((R, L), -1, dtype=torch.long)  # -1: padding after the packed sequence
    for r in range(R):
        ids[r, : starts[r]] = torch.cat(seqs[r])
        positions[r, : starts[r]] = torch.cat(poss[r])
        seg[r, : starts[r]] = torch.cat(segs[r])
    q, k = seg[:, :, None], seg[:, None, :]  # [R, L, 1], [R, 1, L]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    attention = causal & (q >= 0) & (k >= 0) & ((k == 0) | (k == q))  # the prompt (segment 0) or the same response
    attention |= torch.eye(L, dtype=torch.bool)  # padding attends to itself: no fully masked row
    # response token 0 is predicted by the prompt's last position, token t > 0 by response token t - 1
    source = []
    for i, (r, last_prompt, start) in enumerate(pred):
        n = int(lengths[i])
        if n:
            src = torch.cat([torch.tensor([last_prompt]), torch.arange(start, start + n - 1)])
            source.append((r * L + src)[mask[i, :n]])
    return Packed(
        ids=ids,
        positions=positions,
        attention=attention[:, None],
        source=torch.cat(source) if source else torch.zeros(0, dtype=torch.long),
    )


def _body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The transformer body and the LM head of a plain causal LM, or None where packing is unsafe.

    Packing needs a custom 4D attention mask (sdpa or eager attention) and a head that is a plain
    linear map (no logit soft-capping or scaling, which some architectures add in ``forward``).
    """
    from anypo.models import is_lora

    base = model.get_base_model() if is_lora(model) else model
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager"):
        return None
    if any(getattr(cfg, a, None) not in (None, 1.0) for a in ("final_logit_softcapping", "logit_scale")):
        return None
    get_decoder, head = getattr(base, "get_decoder", None), base.get_output_embeddings()
    if get_decoder is None or not isinstance(head, torch.nn.Linear):
        return None
    return get_decoder(), head


def response_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    entropy: bool = False,
    logits: bool = False,
    entropy_grad: bool = False,
    pack: bool = True,
) -> PolicyOutput:
    """Log-probabilities of the response tokens under ``model`` (with grad if enabled).

    With ``pack`` (the default, where the model allows it) the rows that share a prompt run as one
    packed sequence (``pack_by_prompt``), and only the hidden states that predict a response token go
    through the LM head, in chunks that never hold the [n, V] logits at once (``ops.linear_logprobs``).
    ``pack=False`` runs one padded row per sequence through the model's own forward.

    Args:
        entropy: also return the per-token entropy (detached, for metrics, unless ``entropy_grad``).
        logits: also return the [N, T, V] logits (large: only for parts that declare ``needs_logits``).
        entropy_grad: the entropy is part of a loss and needs its gradient.

    Returns: PolicyOutput with logprobs [N, T] (0 on padding), entropy [N, T] and logits [N, T, V]
    when asked.
    """
    mask = batch.response_mask.bool()
    packed = response_hidden(model, batch) if pack else None
    if packed is None:
        lg = _padded_response_logits(model, batch).float() / temperature  # [N, T, V]
        return _from_logits(lg, batch.response_ids, mask, entropy, logits)
    h, head = packed
    targets = batch.response_ids[mask]  # [n], row-major like h
    N, T = mask.shape
    if logits or entropy_grad:  # materialise [n, V]: a part needs the logits or the entropy's gradient
        lg = head(h).float() / temperature
        full = lg.new_zeros(N, T, lg.shape[-1])
        full[mask] = lg
        return _from_logits(full, batch.response_ids, mask, entropy, logits)
    lp, ent = linear_logprobs(h, head.weight, head.bias, targets, temperature, entropy=entropy)
    out_lp = lp.new_zeros(N, T).masked_scatter(mask, lp)
    out_ent = lp.new_zeros(N, T).masked_scatter(mask, ent) if ent is not None else None
    return PolicyOutput(logprobs=out_lp, entropy=out_ent)


def response_hidden(model: torch.nn.Module, batch: RolloutBatch) -> tuple[Tensor, torch.nn.Linear] | None:
    """``(h, head)``: the final hidden states that predict the masked response tokens, [n, H] in
    row-major order of ``batch.response_mask`` (n = its sum), from one packed pass
    (``pack_by_prompt``), and the LM head (``head(h)`` are the raw logits). None where packing is
    unsafe for ``model`` (then only the padded forward of ``_padded_response_logits`` applies)."""
    parts = _body_and_head(model)
    if parts is None:
        return None
    body, head = parts
    pk = pack_by_prompt(batch)
    hidden = body(
        inputs_embeds=_embed(body, head, pk.ids),
        attention_mask=pk.attention,
        position_ids=pk.positions,
        use_cache=False,
    )
    # index_select, not ``[pk.source]``: the last prompt position predicts the first token of every
    # response, so ``source`` repeats it, and the backward of advanced indexing (index_put_ with
    # accumulate) sums repeated rows in a thread-timing-dependent order on CPU; index_select's
    # backward (index_add_) sums them in index order, so the same run gives the same gradient bits.
    return torch.index_select(hidden.last_hidden_state.flatten(0, 1), 0, pk.source), head  # [n, H]


def _embed(body: torch.nn.Module, head: torch.nn.Module, ids: Tensor) -> Tensor:
    """Input embeddings of ``ids``; with a sparse gradient where the embedding is tied to the head.

    The dense gradient of an embedding lookup is a zero [V, H] table with a few rows filled in (113 MB
    to fill at V = 49k, per micro-batch). When the table is the LM head's weight, autograd sums the
    lookup's gradient with the head's dense one before it reaches ``.grad``; a sparse lookup gradient
    makes that sum a copy of the head's plus a few rows, with no table of zeros to fill, and the
    result is dense, as the optimizer expects. An untied table keeps the dense gradient (a sparse
    ``.grad`` would reach the optimizer).
    """
    table = body.get_input_embeddings()
    w = table.weight
    tied = w is head.weight and w.requires_grad and torch.is_grad_enabled()
    if not tied or type(table) is not torch.nn.Embedding:
        return table(ids)
    return torch.nn.functional.embedding(ids, w, table.padding_idx, sparse=True)


def _from_logits(lg: Tensor, resp: Tensor, mask: Tensor, entropy: bool, keep_logits: bool) -> PolicyOutput:
    """PolicyOutput from [N, T, V] temperature-scaled logits (masked positions give 0)."""
    m = mask.to(torch.float32)
    lp = logprobs_from_logits(lg, resp) * m
    ent = entropy_from_logits(lg) * m if entropy else None
    return PolicyOutput(logprobs=lp, entropy=ent, logits=lg if keep_logits else None)


def _group_index(group_ids: Tensor) -> Tensor:
    """[N] each row's index into the sorted distinct group ids."""
    return torch.unique(group_ids, return_inverse=True)[1]


def micro_batches(batch: RolloutBatch, size: int) -> list[tuple[Tensor, RolloutBatch]]:
    """Split ``batch`` into micro-batches of ``size`` sequences, padding trimmed.

    Rows are ordered group by group (so samples of one prompt share its forward pass), groups by
    their longest response and rows by length (so little is wasted on padding); every micro-batch carries the global ``loss_scale`` of ``batch``, so the sum of their
    losses is the loss of ``batch`` (the micro-batch contract). Returns (row indices, micro-batch).
    """
    scale = batch.scale()
    length = batch.response_mask.sum(1)
    inverse = _group_index(batch.group_ids)
    group_max = torch.zeros(int(inverse.max()) + 1, dtype=length.dtype).scatter_reduce(0, inverse, length, "amax")
    # group-major (a group's rows share one prompt pass), longest groups first, longest rows first
    order = torch.argsort(-length, stable=True)
    order = order[torch.argsort(inverse[order], stable=True)]
    order = order[torch.argsort(-group_max[inverse[order]], stable=True)]
    return [(idx, batch.select(idx, loss_scale=scale).trimmed()) for idx in order.split(size)]


@torch.no_grad()
def batched_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, temperature: float, micro: int, pack: bool = True
) -> Tensor:
    """[N, T] log-probs without grad, computed in trimmed micro-batches of ``micro`` sequences."""
    out = torch.zeros(batch.response_mask.shape, dtype=batch.rewards.dtype)
    for idx, mb in micro_batches(batch, micro):
        lp = response_logprobs(model, mb, temperature, pack=pack).logprobs
        out[idx, : lp.shape[1]] = lp.to(out.dtype)
    return out


class Reference:
    """The frozen reference policy.

    With LoRA it is the base model with the adapters disabled (no copy at all). Otherwise it is a
    frozen copy of the initial weights; with ``offload_path`` (the trainer's default) that copy lives
    in a safetensors file and is read back only for the reference pass. The reference weights and the
    policy's gradients are then never in memory at the same time, which takes one model's worth off
    the peak, for one file read (from the page cache) per step.
    """

    def __init__(self, model: torch.nn.Module, offload_path: Path | None = None):
        from anypo.models import is_lora

        self.lora = is_lora(model)
        self.path = None if self.lora else offload_path
        self.model = model if self.lora else copy.deepcopy(model).eval().requires_grad_(False)
        if self.path is not None:
            from safetensors.torch import save_file

            # named_parameters() lists a tied weight once: the file holds each distinct tensor once
            save_file({n: p.detach().contiguous() for n, p in self.model.named_parameters()}, str(self.path))
            self._release()

    def _release(self) -> None:
        for p in self.model.parameters():
            p.data = torch.empty(0, dtype=p.dtype)  # keeps the Parameter objects (and their tying)

    def logprobs(self, batch: RolloutBatch, temperature: float, micro: int, pack: bool = True) -> Tensor:
        if self.path is not None:
            from safetensors.torch import load_file

            weights = load_file(str(self.path))
            for n, p in self.model.named_parameters():
                p.data = weights[n]
            del weights
        ctx = self.model.disable_adapter() if self.lora else nullcontext()
        try:
            with ctx:
                return batched_logprobs(self.model, batch, temperature, micro, pack)
        finally:
            if self.path is not None:
                self._release()


COMBINES = ("mean", "min", "soft_min")
HEAD_KINDS = ("linear", "layernorm_mlp")
VALUE_STATES = ("before", "after")


@dataclasses.dataclass(frozen=True)
class CriticConfig:
    """The critic the online loop builds (once, for every part) when a part ``needs_values``.

    A copy of the policy's trunk with ``heads`` value heads on its last hidden state; the heads'
    values are combined into the one ``V`` every part sees (``batch.values``, and the value loss's
    ``values``), so the value loss trains every head through the combination. The default is the
    loop's PPO critic: one zero-initialised linear head, ``V(s_t)`` before each response token.

    SAFE's double soft-min critic ("SAFE: Stable Alignment Finetuning with Entropy-Aware Predictive
    Control for RLHF", https://arxiv.org/abs/2602.04651; official code github.com/ryyzn9/SAFE
    ``notebooks/mainD.py``, ``DoubleCritic``) is ``CriticConfig(heads=2, combine="soft_min",
    alpha=0.3, head="layernorm_mlp", state="after")``:

        h      = LayerNorm(hidden state)                       (one LayerNorm shared by the heads)
        v_k    = Linear(h/4 -> 1)(GELU(Linear(h -> h/4)(h)))  k = 1, 2 (PyTorch's default init)
        V      = -alpha (logsumexp_k(-v_k / alpha) - log K)    (K = 2: SAFE's soft-min, alpha 0.3)

    ``combine``: ``soft_min`` (tends to ``min`` as alpha -> 0 and to ``mean`` as alpha -> infinity),
    ``min`` or ``mean`` over the heads. ``state``: ``before`` gives ``V(s_t)``, the state before
    response token ``t`` (what GAE needs); ``after`` gives ``V(s_{t+1})``, the state after token ``t``,
    so the last response token's column holds the value of the whole sequence (SAFE reads the last
    position's hidden state). One linear head starts at zero; several heads (and ``layernorm_mlp``
    heads) get PyTorch's default initialisation, so that they differ, drawn with the run's seed (the
    loop's global random stream is left as it was).
    """

    heads: int = 1
    """Value heads on the trunk (SAFE: 2)."""
    combine: str = "mean"
    """How the heads' values become V: mean, min or soft_min (any of them is the value with one head)."""
    alpha: float = 0.3
    """Temperature of the soft-min (SAFE's alpha_softmin 0.3)."""
    head: str = "linear"
    """linear: Linear(h, 1), zero-initialised; layernorm_mlp: SAFE's LayerNorm -> Linear(h, h/4) -> GELU -> Linear(h/4, 1)."""
    state: str = "before"
    """before: V(s_t) before each response token (GAE); after: V(s_{t+1}) after it (a sequence value at the last token)."""

    def __post_init__(self) -> None:
        if self.heads < 1:
            raise ValueError(f"CriticConfig.heads must be >= 1, got {self.heads} (e.g. --algo.critic.heads 2)")
        if self.combine not in COMBINES:
            raise ValueError(f"CriticConfig.combine must be one of {', '.join(COMBINES)}, got {self.combine!r}")
        if not self.alpha > 0:
            raise ValueError(f"CriticConfig.alpha must be > 0 (the soft-min temperature, e.g. 0.3), got {self.alpha}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"CriticConfig.head must be one of {', '.join(HEAD_KINDS)}, got {self.head!r}")
        if self.state not in VALUE_STATES:
            raise ValueError(f"CriticConfig.state must be one of {', '.join(VALUE_STATES)}, got {self.state!r}")


def combine_heads(v: Tensor, combine: str, alpha: float) -> Tensor:
    """The critic's value from its heads' values ``v`` [..., K]: their mean, min, or soft-min
    ``-alpha (logsumexp_k(-v_k / alpha) - log K)`` (SAFE's ``DoubleCritic.soft_min`` for K = 2). [...]"""
    if combine == "mean":
        return v.mean(-1)
    if combine == "min":
        return v.amin(-1)
    if combine == "soft_min":
        return -alpha * (torch.logsumexp(-v / alpha, dim=-1) - math.log(v.shape[-1]))
    raise ValueError(f"CriticConfig.combine must be one of {', '.join(COMBINES)}, got {combine!r}")


class Critic(torch.nn.Module):
    """A value model: a copy of the policy's trunk with value heads (``CriticConfig``), V for every
    response token.

    Args:
        policy: the policy whose trunk is copied (its base model's for LoRA).
        cfg: heads, how they combine, their kind and the state they value (default: one linear head).
        seed: seeds the random initialisation of several heads or ``layernorm_mlp`` heads.
    """

    def __init__(self, policy: torch.nn.Module, cfg: CriticConfig | None = None, seed: int = 0):
        super().__init__()
        from anypo.models import is_lora

        self.cfg = cfg = cfg or CriticConfig()
        base = policy.get_base_model() if is_lora(policy) else policy
        self.trunk = copy.deepcopy(base.model)
        self.trunk.requires_grad_(True)
        h = base.config.hidden_size
        if cfg.head == "linear" and cfg.heads == 1:  # the PPO critic (parameter names "head.*", as always)
            self.head = torch.nn.Linear(h, 1)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if cfg.head == "linear":  # PyTorch's default init: zero heads would stay equal forever
                self.heads = torch.nn.ModuleList(torch.nn.Linear(h, 1) for _ in range(cfg.heads))
            else:
                self.norm = torch.nn.LayerNorm(h)
                self.heads = torch.nn.ModuleList(
                    torch.nn.Sequential(torch.nn.Linear(h, h // 4), torch.nn.GELU(), torch.nn.Linear(h // 4, 1))
                    for _ in range(cfg.heads)
                )

    @torch.no_grad()
    def values(self, batch: RolloutBatch, micro: int) -> Tensor:
        """[N, T] values without grad, in trimmed micro-batches."""
        return self.values_and_end(batch, micro)[0]

    @torch.no_grad()
    def values_and_end(self, batch: RolloutBatch, micro: int) -> tuple[Tensor, Tensor]:
        """([N, T] values, [N] end values) without grad, in trimmed micro-batches, from one trunk pass.

        The end value is ``V(s_l)``, the value of the state after each row's last response token (the
        whole sequence so far), whatever ``CriticConfig.state``; 0 for an empty response."""
        out = torch.zeros(batch.response_mask.shape, dtype=batch.rewards.dtype)
        end = torch.zeros(batch.num_seqs, dtype=batch.rewards.dtype)
        for idx, mb in micro_batches(batch, micro):
            v, e = self._values(mb, end=True)
            out[idx, : v.shape[1]] = v.to(out.dtype)
            end[idx] = e.to(end.dtype)
        return out, end

    def _after_states(self, batch: RolloutBatch) -> tuple[Tensor, int]:
        """[N, 1 + T, H] float hidden states: the last prompt position's, then each response token's."""
        ids, attn, pos, T = _inputs(batch)
        h = self.trunk(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
        return h[:, h.shape[1] - T - 1 :].float(), T

    def _heads(self, h: Tensor) -> Tensor:
        """[..., K] every head's value of the hidden states ``h`` [..., H]."""
        if hasattr(self, "head"):
            return self.head(h)
        x = self.norm(h) if hasattr(self, "norm") else h
        return torch.cat([head(x) for head in self.heads], dim=-1)

    def _combine(self, v: Tensor) -> Tensor:
        return v[..., 0] if v.shape[-1] == 1 else combine_heads(v, self.cfg.combine, self.cfg.alpha)

    def head_values(self, batch: RolloutBatch) -> Tensor:
        """[N, T, K] every head's value at each response token (``CriticConfig.state``), 0 on padding."""
        h, _ = self._after_states(batch)
        v = self._heads(h[:, :-1] if self.cfg.state == "before" else h[:, 1:])  # [N, T, K]
        return v * batch.response_mask.to(v.dtype)[..., None]

    def _values(self, batch: RolloutBatch, end: bool) -> tuple[Tensor, Tensor | None]:
        h, T = self._after_states(batch)
        mask = batch.response_mask.to(h.dtype)
        v = self._heads(h[:, :-1] if self.cfg.state == "before" else h[:, 1:]) * mask[..., None]  # [N, T, K]
        values = self._combine(v) * mask
        if not end:
            return values, None
        last = last_token_index(batch.response_mask)  # [N], -1 for an empty response
        at = h[torch.arange(h.shape[0]), last.clamp_min(-1) + 1]  # [N, H]: after the last token (or the prompt)
        e = self._combine(self._heads(at))  # [N]
        return values, torch.where(last >= 0, e, torch.zeros_like(e))

    def forward(self, batch: RolloutBatch) -> Tensor:
        """[N, T] values of the states before (or after) each response token, 0 on padding: the heads' combination."""
        return self._values(batch, end=False)[0]


def with_fields(batch: RolloutBatch, **kw) -> RolloutBatch:
    return dataclasses.replace(batch, **kw)
