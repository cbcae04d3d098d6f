"""The trainer's view of a causal LM: log-probabilities of response tokens, values, reference passes."""

from __future__ import annotations

import copy
import dataclasses
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _response_logits(model: torch.nn.Module, batch: RolloutBatch, share_prompt: bool = False) -> Tensor:
    """[N, T, V] logits predicting each response token: row i, column t predicts response token t.

    When several rows share a prompt (the G samples of a group), the prompt runs once: its KV cache
    (with grad) is indexed out to the rows, and the responses attend to it. The backward pass then
    sums the rows' gradients into the one prompt computation, exactly as if each row had its own
    copy. Otherwise (or under gradient checkpointing, which forbids a cache) prompt and response run
    as one sequence.
    """
    ids, attn, pos, T = _inputs(batch)
    unique, first, inverse = _unique_prompts(batch.group_ids)
    grad_ckpt = getattr(model, "is_gradient_checkpointing", False) and model.training
    # Off by default: measured slower on CPU (benchmarks/train_phase.py), the cached-attention path
    # costs more than the prompt tokens it saves at these lengths.
    if not share_prompt or len(unique) == batch.num_seqs or grad_ckpt:
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1, use_cache=False)
        return out.logits[:, :-1]  # position P-1+t predicts response token t
    P = batch.prompt_ids.shape[1]
    p_out = model(
        input_ids=ids[first, :P],
        attention_mask=attn[first, :P],
        position_ids=pos[first, :P],
        logits_to_keep=1,
        use_cache=True,
    )
    cache = p_out.past_key_values
    cache.batch_select_indices(inverse)  # [U, ...] -> [N, ...]; differentiable indexing
    r_out = model(
        input_ids=ids[:, P:], attention_mask=attn, position_ids=pos[:, P:], past_key_values=cache, use_cache=True
    )
    # the prompt's last position predicts response token 0; response position t predicts token t+1
    return torch.cat([p_out.logits[inverse], r_out.logits[:, :-1]], dim=1)


def _unique_prompts(group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unique group ids, the first row of each, and each row's index into them."""
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    rows = torch.arange(len(group_ids))
    first = torch.full((len(unique),), len(group_ids), dtype=torch.long).scatter_reduce(0, inverse, rows, "amin")
    return unique, first, inverse


def response_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    entropy: bool = False,
    logits: bool = False,
    share_prompt: bool = False,
) -> PolicyOutput:
    """Log-probabilities of the response tokens under ``model`` (with grad if enabled).

    Only the T positions that predict response tokens go through the LM head: prompt positions never
    pay the [*, V] projection and log-softmax. Rows of one group share one prompt forward pass.

    Returns: PolicyOutput with logprobs [N, T] (0 on padding), entropy [N, T] and logits [N, T, V]
    when asked.
    """
    lg = _response_logits(model, batch, share_prompt).float() / temperature  # [N, T, V]
    resp = batch.response_ids
    lp = lg.gather(-1, resp.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1)  # [N, T]
    mask = batch.response_mask.to(lp.dtype)
    ent = None
    if entropy:
        p = F.softmax(lg, dim=-1)
        ent = (torch.logsumexp(lg, -1) - (p * lg).sum(-1)) * mask
    return PolicyOutput(logprobs=lp * mask, entropy=ent, logits=lg if logits else None)


def micro_batches(batch: RolloutBatch, size: int) -> list[tuple[Tensor, RolloutBatch]]:
    """Split ``batch`` into micro-batches of ``size`` sequences, padding trimmed.

    Rows are ordered group by group (so samples of one prompt share its forward pass), groups by
    their longest response and rows by length (so little is wasted on padding); every micro-batch carries the global ``loss_scale`` of ``batch``, so the sum of their
    losses is the loss of ``batch`` (the micro-batch contract). Returns (row indices, micro-batch).
    """
    scale = batch.scale()
    length = batch.response_mask.sum(1)
    _, _, inverse = _unique_prompts(batch.group_ids)
    group_max = torch.zeros(int(inverse.max()) + 1, dtype=length.dtype).scatter_reduce(0, inverse, length, "amax")
    # group-major (a group's rows share one prompt pass), longest groups first, longest rows first
    order = torch.argsort(-length, stable=True)
    order = order[torch.argsort(inverse[order], stable=True)]
    order = order[torch.argsort(-group_max[inverse[order]], stable=True)]
    return [(idx, batch.select(idx, loss_scale=scale).trimmed()) for idx in order.split(size)]


@torch.no_grad()
def batched_logprobs(model: torch.nn.Module, batch: RolloutBatch, temperature: float, micro: int) -> Tensor:
    """[N, T] log-probs without grad, computed in trimmed micro-batches of ``micro`` sequences."""
    out = torch.zeros(batch.response_mask.shape, dtype=batch.rewards.dtype)
    for idx, mb in micro_batches(batch, micro):
        lp = response_logprobs(model, mb, temperature).logprobs
        out[idx, : lp.shape[1]] = lp.to(out.dtype)
    return out


class Reference:
    """The frozen reference policy: the base model with adapters disabled (LoRA), else a frozen copy."""

    def __init__(self, model: torch.nn.Module):
        from anypo.models import is_lora

        self.lora = is_lora(model)
        self.model = model if self.lora else copy.deepcopy(model).eval().requires_grad_(False)

    def logprobs(self, batch: RolloutBatch, temperature: float, micro: int) -> Tensor:
        ctx = self.model.disable_adapter() if self.lora else nullcontext()
        with ctx:
            return batched_logprobs(self.model, batch, temperature, micro)

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.lora else self.model.state_dict()


class Critic(torch.nn.Module):
    """A value model: a copy of the policy's trunk with a scalar head, V(s_t) for every response token."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        from anypo.models import is_lora

        base = policy.get_base_model() if is_lora(policy) else policy
        self.trunk = copy.deepcopy(base.model)
        self.trunk.requires_grad_(True)
        self.head = torch.nn.Linear(base.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def values(self, batch: RolloutBatch, micro: int) -> Tensor:
        """[N, T] values without grad, in trimmed micro-batches."""
        out = torch.zeros(batch.response_mask.shape, dtype=batch.rewards.dtype)
        for idx, mb in micro_batches(batch, micro):
            v = self(mb)
            out[idx, : v.shape[1]] = v.to(out.dtype)
        return out

    def forward(self, batch: RolloutBatch) -> Tensor:
        """[N, T] values of the states before each response token (0 on padding)."""
        ids, attn, pos, T = _inputs(batch)
        h = self.trunk(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
        v = self.head(h[:, -T - 1 : -1].float()).squeeze(-1)  # [N, T]
        return v * batch.response_mask.to(v.dtype)


def with_fields(batch: RolloutBatch, **kw) -> RolloutBatch:
    return dataclasses.replace(batch, **kw)
