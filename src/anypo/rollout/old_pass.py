"""The behaviour policy's per-token inputs that parts declare beyond the sampled tokens' log-probs.

Parts ask through their configs (``AlgoConfig.needs``); the loop never looks at their names:

* ``needs_old_tempered_logprobs`` (DCPO): for every ``t`` in the part's
  ``old_logprob_temperatures(state)``, ``extras[tempered_key(t)]`` [N, T] =
  ``log_softmax(z / t)[o]``, ``z`` the raw logits;
* ``needs_old_mean_logprobs`` (ROVER off-policy): ``extras["old_mean_logprobs"]`` [N, T] =
  ``mean_v log_softmax(z / T_s)_v`` with ``T_s`` the sampling temperature;
* ``needs_old_full_logprobs`` (MDPO's exact KL): ``extras["old_full_logprobs"]`` [Nm, Tm, V] per
  micro-batch, the log-softmax of the step-start weights (:class:`StepAnchor`);
* ``needs_old_prompt_logprobs`` (ARM / ProGRPO's prompt confidence): ``extras["old_prompt_mean_logprobs"]``
  [N] = the mean over a row's prompt tokens ``q_k`` (k >= 1) of ``log_softmax(z / T_s)[q_k]``, the
  behaviour policy's log-probability of each prompt token given the ones before it (one forward
  per distinct prompt, no response); 0 for a one-token prompt;
* ``needs_old_proxy_logprobs`` (Lp-Reg): ``extras[part.proxy_key]`` [N, T] at
  ``part.proxy_positions(batch)`` (chosen after the advantages), NaN elsewhere, from the raw logits
  of those positions only through ``part.proxy_logprobs(logits, targets, T_s)``;
* ``needs_old_teacher_logprobs`` (SDPO): the teacher's log-probs under each row's reprompt
  (``extras["sdpo_teacher_logprobs"]`` [N, T], and with ``part.topk = K > 0`` the student's top-K ids
  ``extras["sdpo_topk_ids"]`` and the teacher's log-probs of them ``extras["sdpo_teacher_topk_logprobs"]``
  [N, T, K]), from the teacher weights in the part's state, on the reprompted rows only
  (:func:`teacher_pass`).

The first two come from the same no-grad forward as the old log-probs (:func:`behaviour_pass`, one
pass whether or not the old log-probs are recomputed); the proxy needs the advantages, so it is a
second no-grad forward after them (:func:`proxy_pass`). Both run in the loop's micro-batches and
reduce the vocabulary ``chunk`` positions at a time: nothing of size [N, T, V] exists, only [chunk, V]
temporaries (the padded fallback of a model that cannot be packed holds one micro-batch's logits, as
its training forward does).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from anypo.advantages.arm import PROMPT_MEAN_LOGPROBS
from anypo.advantages.dcpo import tempered_key  # the extras keys are the declaring parts' contracts
from anypo.losses.mdpo import OLD_FULL_LOGPROBS
from anypo.losses.rover import OLD_MEAN_LOGPROBS
from anypo.losses.sdpo import REPROMPTED, TEACHER_LOGPROBS, TEACHER_PROMPT, TEACHER_TOPK_LOGPROBS, TOPK_IDS
from anypo.ops import linear_logprobs, logprobs_from_logits
from anypo.policy import _body_and_head, _padded_response_logits, micro_batches, response_hidden
from anypo.types import RolloutBatch

__all__ = [
    "BEHAVIOUR_PASS_NEEDS",
    "OldPassRequest",
    "StepAnchor",
    "behaviour_pass",
    "fill_proxies",
    "old_pass_request",
    "prompt_mean_logprobs",
    "proxy_pass",
    "swapped_weights",
    "teacher_pass",
]

BEHAVIOUR_PASS_NEEDS = frozenset({"old_prompt_logprobs", "old_teacher_logprobs"})
"""Needs that :func:`behaviour_pass` provides by itself, wherever the loop runs it (every batch, at
generation time under a replay schedule): the config check adds them to the loop's own list."""


@dataclass(frozen=True)
class OldPassRequest:
    """What one behaviour pass computes.

    Attributes:
        logprobs: the sampled tokens' log-probs at the sampling temperature (recomputed old log-probs).
        temperatures: temperatures ``t`` of ``extras[tempered_key(t)]`` (raw logits divided by ``t``).
        mean_logprobs: ``extras["old_mean_logprobs"]``.
        prompt_logprobs: ``extras["old_prompt_mean_logprobs"]`` [N] (mean prompt-token log-prob).
        teachers: ``(part, state)`` of each part that ``needs_old_teacher_logprobs`` (:func:`teacher_pass`).
    """

    logprobs: bool = False
    temperatures: tuple[float, ...] = ()
    mean_logprobs: bool = False
    prompt_logprobs: bool = False
    teachers: tuple[tuple[Any, Any], ...] = ()

    @property
    def any(self) -> bool:
        plain = self.logprobs or bool(self.temperatures) or self.mean_logprobs or self.prompt_logprobs
        return plain or bool(self.teachers)


def old_pass_request(algo: Any, part_states: dict[str, Any], logprobs: bool) -> OldPassRequest:
    """The request of ``algo``'s parts this step (the tempered temperatures may depend on a part's state)."""
    temps: set[float] = set()
    for slot, part in algo.slots().items():
        if getattr(part, "needs_old_tempered_logprobs", False):
            temps.update(float(t) for t in part.old_logprob_temperatures(part_states.get(slot)))
    teachers = tuple(
        (part, part_states.setdefault(slot, part.init_state()))
        for slot, part in algo.slots().items()
        if getattr(part, "needs_old_teacher_logprobs", False)
    )
    return OldPassRequest(
        logprobs,
        tuple(sorted(temps)),
        algo.needs("old_mean_logprobs"),
        algo.needs("old_prompt_logprobs"),
        teachers,
    )


def _micro_passes(model: torch.nn.Module, batch: RolloutBatch, micro: int, pack: bool):
    """Per micro-batch: (row indices, its response mask [Nm, Tm] bool, targets [n], rows, packed)
    where ``rows(sel)`` gives the raw logits [k, V] of the masked positions ``sel`` ([n] bool), computed
    from the packed hidden states ``packed = (h, head)``, or the padded fallback's logits (``packed`` None)."""
    for idx, mb in micro_batches(batch, micro):
        mask = mb.response_mask.bool()
        targets = mb.response_ids[mask]  # [n] row-major
        packed = response_hidden(model, mb) if pack else None
        if packed is None:
            full = _padded_response_logits(model, mb)[mask]  # [n, V]: one micro-batch, as its training forward

            def rows(sel: Tensor | slice, full: Tensor = full) -> Tensor:
                return full[sel].float()

            yield idx, mask, targets, rows, None
        else:
            h, head = packed

            def rows(sel: Tensor | slice, h: Tensor = h, head: torch.nn.Module = head) -> Tensor:
                return head(h[sel]).float()

            yield idx, mask, targets, rows, (h, head)


@torch.no_grad()
def behaviour_pass(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float,
    micro: int,
    pack: bool,
    request: OldPassRequest,
    chunk: int = 256,
) -> dict[str, Tensor]:
    """One no-grad forward of ``model`` over ``batch`` computing ``request``.

    Args:
        temperature: the sampling temperature (of the log-probs and of the mean log-probs).
        micro: sequences per forward; pack: pack samples of a prompt (``response_logprobs``).
        chunk: positions whose [chunk, V] logits exist at once.

    Returns:
        [N, T] tensors in the dtype of ``batch.rewards``, 0 on padding: ``"logprobs"`` (exactly
        ``batched_logprobs``'s) when asked, ``tempered_key(t)`` per temperature, ``"old_mean_logprobs"``;
        and the [N] ``"old_prompt_mean_logprobs"`` (:func:`prompt_mean_logprobs`).
    """
    if not request.any:
        return {}
    if request.teachers:  # SDPO: the teacher under each row's reprompt, a pass of its own
        out = behaviour_pass(model, batch, temperature, micro, pack, replace(request, teachers=()), chunk)
        for part, state in request.teachers:
            out |= teacher_pass(model, batch, temperature, micro, pack, part, state, chunk)
        return out
    if request.prompt_logprobs:
        plain = OldPassRequest(request.logprobs, request.temperatures, request.mean_logprobs)
        out = behaviour_pass(model, batch, temperature, micro, pack, plain, chunk) if plain.any else {}
        return out | {PROMPT_MEAN_LOGPROBS: prompt_mean_logprobs(model, batch, temperature)}
    N, T = batch.response_mask.shape
    keys = (["logprobs"] if request.logprobs else []) + [tempered_key(t) for t in request.temperatures]
    keys += [OLD_MEAN_LOGPROBS] if request.mean_logprobs else []
    out = {k: torch.zeros(N, T, dtype=batch.rewards.dtype) for k in keys}
    for idx, mask, targets, rows, packed in _micro_passes(model, batch, micro, pack):
        n, vals = len(targets), {k: [] for k in keys}
        if request.logprobs and packed is not None:  # the training forward's own fused head: same numbers
            h, head = packed
            vals["logprobs"].append(linear_logprobs(h, head.weight, head.bias, targets, temperature)[0])
        for i in range(0, n, chunk):
            z = rows(slice(i, i + chunk))  # [c, V] raw logits
            y = targets[i : i + chunk, None].long()
            if request.logprobs and packed is None:
                vals["logprobs"].append(logprobs_from_logits(z / temperature, y.squeeze(-1)))
            for t in request.temperatures:
                vals[tempered_key(t)].append(torch.log_softmax(z / t, dim=-1).gather(-1, y).squeeze(-1))
            if request.mean_logprobs:
                zs = z / temperature
                vals[OLD_MEAN_LOGPROBS].append(zs.mean(-1) - torch.logsumexp(zs, dim=-1))
        for k in keys:
            flat = torch.cat(vals[k]) if vals[k] else torch.zeros(0)
            grid = torch.zeros(mask.shape, dtype=out[k].dtype).masked_scatter(mask, flat.to(out[k].dtype))
            out[k][idx, : mask.shape[1]] = grid
    return out


@torch.no_grad()
def prompt_mean_logprobs(model: torch.nn.Module, batch: RolloutBatch, temperature: float) -> Tensor:
    """[N] mean log-probability of each row's prompt tokens under ``model``, given the tokens before them.

    ``mean_{k=1..P_i-1} log_softmax(z_{k-1} / temperature)[q_k]`` over the real (unpadded) prompt
    tokens ``q_0..q_{P_i-1}`` of row ``i``, ``z_{k-1}`` the raw logits after ``q_0..q_{k-1}``; the first
    token has no context and is not scored. One forward per distinct prompt (the rows of a group share
    it), of the prompt alone. A one-token prompt gives 0 (confidence 1). Dtype of ``batch.rewards``.
    """
    ids = batch.require("prompt_ids", "the rollout fills it")
    pmask = batch.require("prompt_mask", "the rollout fills it").bool()
    out = torch.zeros(batch.num_seqs, dtype=batch.rewards.dtype)
    keys = torch.where(pmask, ids, -1)
    uniq, which = torch.unique(keys, dim=0, return_inverse=True)  # rows with the same prompt tokens
    for r in range(uniq.shape[0]):
        row = int((which == r).nonzero()[0])
        q = ids[row][pmask[row]]  # [P_i]
        if q.numel() < 2:
            continue
        logits = model(input_ids=q[None], use_cache=False).logits[0, :-1].float() / temperature  # [P_i - 1, V]
        lp = torch.log_softmax(logits, dim=-1).gather(-1, q[1:, None].long()).squeeze(-1)
        out[which == r] = lp.mean().to(out.dtype)
    return out


@torch.no_grad()
def proxy_pass(
    model: torch.nn.Module,
    batch: RolloutBatch,
    micro: int,
    pack: bool,
    positions: Tensor,
    proxy: Callable[[Tensor, Tensor], Tensor],
    chunk: int = 256,
) -> Tensor:
    """[N, T] ``proxy(raw logits [k, V], targets [k])`` at ``positions`` ([N, T] bool), NaN elsewhere.

    Only micro-batches holding a selected position run the model, and only the selected positions
    go through the LM head, ``chunk`` at a time.
    """
    out = torch.full(batch.response_mask.shape, float("nan"), dtype=batch.rewards.dtype)
    positions = positions.bool() & (batch.response_mask != 0)
    if not bool(positions.any()):
        return out
    keep = positions.any(-1).nonzero().flatten()  # rows with a selected position
    sub = batch.select(keep)
    for idx, mask, targets, rows, _ in _micro_passes(model, sub, micro, pack):
        sel = positions[keep[idx], : mask.shape[1]][mask]  # [n] bool over the micro-batch's masked tokens
        where = sel.nonzero().flatten()
        vals = [proxy(rows(where[i : i + chunk]), targets[where[i : i + chunk]]) for i in range(0, len(where), chunk)]
        flat = torch.full((len(sel),), float("nan"), dtype=out.dtype)
        if vals:
            flat[where] = torch.cat(vals).to(out.dtype)
        grid = torch.full(mask.shape, float("nan"), dtype=out.dtype).masked_scatter(mask, flat)
        out[keep[idx], : mask.shape[1]] = grid
    return out


def fill_proxies(
    model: torch.nn.Module, batch: RolloutBatch, parts: Iterable[Any], temperature: float, micro: int, pack: bool
) -> None:
    """For each part with ``needs_old_proxy_logprobs``: ``batch.extras[part.proxy_key]`` = the
    :func:`proxy_pass` at ``part.proxy_positions(batch)`` with ``part.proxy_logprobs`` at ``temperature``."""
    for part in parts:
        if getattr(part, "needs_old_proxy_logprobs", False):
            proxy = partial(part.proxy_logprobs, temperature=temperature)
            batch.extras[part.proxy_key] = proxy_pass(model, batch, micro, pack, part.proxy_positions(batch), proxy)


@contextmanager
def swapped_weights(model: torch.nn.Module, weights: dict[str, Tensor]):
    """Run ``model`` with ``weights`` (name -> tensor, a subset of ``named_parameters``) in place of its
    own: the parameters' storage is swapped, not copied, and restored on exit (a tied weight is one
    parameter, so it is swapped once)."""
    params = dict(model.named_parameters())
    saved: dict[str, Tensor] = {}
    try:
        for n, w in weights.items():
            saved[n] = params[n].data
            params[n].data = w
        yield model
    finally:
        for n, d in saved.items():
            params[n].data = d


def _logit_rows(model: torch.nn.Module, mb: RolloutBatch, pack: bool) -> Callable[[Tensor | slice], Tensor]:
    """``rows(sel)``: the raw logits [k, V] (float32) of the masked response positions ``sel`` of ``mb``
    under the weights ``model`` has now: the hidden states and the head's weights are taken at this
    call, so ``rows`` keeps giving these weights' logits after a :func:`swapped_weights` block ends."""
    mask = mb.response_mask.bool()
    packed = response_hidden(model, mb) if pack else None
    if packed is None:
        full = _padded_response_logits(model, mb)[mask]  # [n, V]: one micro-batch, as its training forward
        return lambda sel: full[sel].float()
    h, head = packed
    w, b = head.weight.detach(), head.bias.detach() if head.bias is not None else None
    return lambda sel: torch.nn.functional.linear(h[sel], w, b).float()


@torch.no_grad()
def teacher_pass(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float,
    micro: int,
    pack: bool,
    part: Any,
    state: dict[str, Any],
    chunk: int = 256,
) -> dict[str, Tensor]:
    """SDPO's teacher inputs (``needs_old_teacher_logprobs``), on the rows with ``extras["sdpo_reprompted"]``.

    First ``part.sync_teacher(state, model)`` (the teacher weights: a copy of the policy at the first
    call, then its EMA). Then, per micro-batch of those rows: the teacher (``state["teacher"]`` swapped
    into ``model``; with ``part.teacher == "trust_region"`` the logits ``lerp(z_teacher, z_policy,
    part.teacher_update_rate)``) over ``extras["sdpo_teacher_prompt"]`` + the row's response tokens,
    and, when ``part.topk = K > 0``, the policy over the original prompt for its top-K ids, ``chunk``
    positions at a time (only [chunk, V] temporaries).

    Returns:
        ``"sdpo_teacher_logprobs"`` [N, T] = ``log_softmax(z_T / temperature)[o]`` (dtype of the rewards)
        and, with K > 0, ``"sdpo_topk_ids"`` [N, T, K] (long) and ``"sdpo_teacher_topk_logprobs"`` [N, T, K]:
        0 off the reprompted rows and on padding.
    """
    N, T = batch.response_mask.shape
    K = int(getattr(part, "topk", 0))
    out = {TEACHER_LOGPROBS: torch.zeros(N, T, dtype=batch.rewards.dtype)}
    if K > 0:
        out[TOPK_IDS] = torch.zeros(N, T, K, dtype=torch.long)
        out[TEACHER_TOPK_LOGPROBS] = torch.zeros(N, T, K, dtype=batch.rewards.dtype)
    flags = batch.extras.get(REPROMPTED)
    prompts = batch.extras.get(TEACHER_PROMPT)
    if flags is None or prompts is None:
        raise ValueError(
            f"SDPO's teacher pass needs extras[{REPROMPTED!r}] and extras[{TEACHER_PROMPT!r}]: use the sdpo_reprompt "
            "rollout part (AlgoConfig.rollout=SDPOReprompt(...), as the sdpo preset does)"
        )
    part.sync_teacher(state, model)
    keep = torch.tensor([bool(f) for f in flags], dtype=torch.bool).nonzero().flatten()
    if keep.numel() == 0:
        return out
    from anypo.rollout.groups import left_pad

    sub = batch.select(keep)
    t_ids, t_mask = left_pad([list(prompts[int(i)]) for i in keep], 0)
    teach = replace(sub, prompt_ids=t_ids, prompt_mask=t_mask)
    mix = getattr(part, "teacher", "ema") == "trust_region"
    coef = float(getattr(part, "teacher_update_rate", 0.0))
    for (idx, mb), (idx_t, mbt) in zip(micro_batches(sub, micro), micro_batches(teach, micro), strict=True):
        if not torch.equal(idx, idx_t):  # the order depends on lengths and groups only, never on prompts
            raise RuntimeError("teacher_pass: the student and teacher micro-batches differ")
        mask = mb.response_mask.bool()
        targets = mb.response_ids[mask]
        with swapped_weights(model, state["teacher"]):
            teacher_rows = _logit_rows(model, mbt, pack)
        policy_rows = _logit_rows(model, mbt, pack) if mix else None
        student_rows = _logit_rows(model, mb, pack) if K > 0 else None
        vals: dict[str, list[Tensor]] = {k: [] for k in out}
        for i in range(0, len(targets), chunk):
            sl = slice(i, i + chunk)
            z = teacher_rows(sl)
            if policy_rows is not None:
                z = torch.lerp(z, policy_rows(sl), coef)
            lst = torch.log_softmax(z / temperature, dim=-1)  # [c, V]
            vals[TEACHER_LOGPROBS].append(lst.gather(-1, targets[sl, None].long()).squeeze(-1))
            if student_rows is not None:
                top = student_rows(sl).topk(min(K, z.shape[-1]), dim=-1).indices  # [c, K]
                vals[TOPK_IDS].append(top)
                vals[TEACHER_TOPK_LOGPROBS].append(lst.gather(-1, top))
        rows = keep[idx]
        for k, v in vals.items():
            flat = torch.cat(v) if v else torch.zeros((0, *out[k].shape[2:]))
            grid = torch.zeros((*mask.shape, *out[k].shape[2:]), dtype=out[k].dtype)
            grid[mask] = flat.to(out[k].dtype)
            out[k][rows, : mask.shape[1]] = grid
    return out


class StepAnchor:
    """The policy as it was when the step's update began (MDPO's ``pi_k``), for a part that declares
    ``needs_old_full_logprobs``: a frozen copy of the model, re-synced from the policy's weights at the
    start of every update, run per micro-batch so that only that micro-batch's [n, V] distributions
    exist (the training forward of such a part holds its [n, V] logits anyway). One model's worth of
    memory; nothing to checkpoint (it is the policy's weights at every step start).

    The anchor's weights do not change within an update, so a response's final hidden states under
    it do not either: they are kept per row (keyed by the row's prompt and response tokens, [n_i, H]
    each, a few MB) from the first micro-batch that holds the row, and every later pass over it
    (MDPO's 5 updates per rollout) runs only the LM head on them instead of the whole model. The
    cache is dropped at every ``sync``. The padded fallback (a model that cannot be packed) runs the
    copy every time.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._hidden: dict[bytes, Tensor] = {}
        self.body_passes = 0  # micro-batches that ran the anchor's body since the last sync (for tests)

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        """Copy the policy's current weights (the step start) into the anchor; forget the cached states."""
        self.model.load_state_dict(model.state_dict())
        self._hidden.clear()
        self.body_passes = 0

    @staticmethod
    def _row_keys(micro: RolloutBatch, mask: Tensor) -> list[bytes]:
        """A key per row: the lengths of its prompt and response (up to the last masked token), then
        their tokens and the response mask, as int64 bytes (unambiguous: every field has a known size)."""
        prompt_ids = micro.require("prompt_ids", "the rollout fills it")
        prompt_mask = micro.require("prompt_mask", "the rollout fills it").bool()
        keys = []
        for i in range(micro.num_seqs):
            cols = mask[i].nonzero()
            n = int(cols[-1]) + 1 if len(cols) else 0
            prompt = prompt_ids[i][prompt_mask[i]]
            row = (torch.tensor([len(prompt), n]), prompt, micro.response_ids[i, :n], mask[i, :n])
            keys.append(torch.cat([t.to(torch.int64) for t in row]).numpy().tobytes())
        return keys

    @torch.no_grad()
    def _states(self, micro: RolloutBatch, mask: Tensor) -> tuple[Tensor, torch.nn.Module] | None:
        """(h [n, H] in row-major mask order, head) from the cache, or from one packed pass that fills it;
        None where the model cannot be packed."""
        parts = _body_and_head(self.model)
        if parts is None:
            return None
        keys = self._row_keys(micro, mask)
        if not all(k in self._hidden for k in keys):
            h = response_hidden(self.model, micro)[0]  # type: ignore[index]  # packable: checked above
            self.body_passes += 1
            for k, rows in zip(keys, h.split(mask.sum(1).tolist()), strict=True):
                self._hidden.setdefault(k, rows.clone())
        return torch.cat([self._hidden[k] for k in keys]), parts[1]

    @torch.no_grad()
    def fill(self, micro: RolloutBatch, temperature: float, pack: bool) -> None:
        """``micro.extras["old_full_logprobs"]`` [Nm, Tm, V]: the anchor's log-softmax of its
        temperature-scaled logits at every response position of ``micro`` (0 on padding)."""
        mask = micro.response_mask.bool()
        packed = self._states(micro, mask) if pack else None
        z = (_padded_response_logits(self.model, micro)[mask] if packed is None else packed[1](packed[0])).float()
        full = z.new_zeros(*mask.shape, z.shape[-1])
        full[mask] = torch.log_softmax(z / temperature, dim=-1)
        micro.extras[OLD_FULL_LOGPROBS] = full
