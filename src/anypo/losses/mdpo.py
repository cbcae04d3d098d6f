"""MDPO on token policies: the unclipped ratio surrogate plus a tempered KL to the step's starting policy.

Notation: ``r_it = exp(lp_it - old_it)``, ``pi_k`` the behaviour policy of the step (the "previous
policy" of mirror descent, fixed during the step's several updates), ``KL_it = KL(pi_theta(. | s_it) ||
pi_k(. | s_it))`` over the full next-token distribution, ``t_k`` the mirror-descent step size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from anypo.losses.common import POLICY_LOSSES, PolicyLossConfig, finish, log_ratio, policy_inputs, ratio_metrics
from anypo.ops import Aggregation, masked_mean
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = ["MDPOLM", "OLD_FULL_LOGPROBS", "exact_kl", "mdpo_lm", "mdpo_step_size"]

OLD_FULL_LOGPROBS = "old_full_logprobs"
"""Key of ``RolloutBatch.extras`` holding [N, T, V] log-probabilities of ``pi_k`` over the vocabulary."""


class _ExactKL(torch.autograd.Function):
    """``KL(softmax(z) || exp(q))`` per row, chunked; the backward recomputes the softmax per chunk, so
    nothing of size [n, V] is kept besides the inputs. ``dKL/dz = p (log p - q - KL)``."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, old_logp: Tensor, rows: Tensor, chunk: int) -> Tensor:
        out = logits.new_zeros(logits.shape[0], dtype=torch.promote_types(logits.dtype, torch.float32))
        for i in range(0, logits.shape[0], chunk):
            sel = rows[i : i + chunk].nonzero().flatten() + i  # masked rows of this chunk only
            if sel.numel():
                lp = torch.log_softmax(logits[sel].to(out.dtype), dim=-1)
                out[sel] = (lp.exp() * (lp - old_logp[sel].to(out.dtype))).sum(-1)
        ctx.save_for_backward(logits, old_logp, rows, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        logits, old_logp, rows, kl = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for i in range(0, logits.shape[0], ctx.chunk):
            sel = rows[i : i + ctx.chunk].nonzero().flatten() + i
            if sel.numel():
                lp = torch.log_softmax(logits[sel].to(kl.dtype), dim=-1)
                g = lp.exp() * (lp - old_logp[sel].to(kl.dtype) - kl[sel].unsqueeze(-1))
                grad[sel] = (grad_out[sel].unsqueeze(-1) * g).to(grad.dtype)
        return grad, None, None, None


def exact_kl(logits: Tensor, old_logprobs: Tensor, mask: Tensor, chunk: int = 256) -> Tensor:
    """[N, T] ``KL(softmax(logits) || exp(old_logprobs))`` over the last axis, 0 off the mask.

    Args:
        logits: [N, T, V] current (temperature-scaled) logits, with grad.
        old_logprobs: [N, T, V] log-probabilities of the previous policy (finite on masked positions;
            padding may hold garbage).
        mask: [N, T] response mask.
        chunk: positions processed at once (forward and backward hold at most [chunk, V] temporaries).
    """
    N, T, V = logits.shape
    rows = (mask != 0).reshape(-1)
    kl = _ExactKL.apply(logits.reshape(N * T, V), old_logprobs.reshape(N * T, V), rows, chunk)
    return kl.reshape(N, T).to(logits.dtype)


def mdpo_step_size(k: int, total: int) -> float:
    """MDPO's ``t_k = 1 - (k - 1) / K`` with ``k`` the 0-based iteration (the official ``iters_so_far``,
    so the first iteration has ``1 + 1/K``), floored at ``1/K``; ``K = 0``: 1 throughout."""
    if total <= 0:
        return 1.0
    return max(1.0 - (k - 1.0) / total, 1.0 / total)


@dataclass(frozen=True)
class MDPOLM(PolicyLossConfig):
    """Mirror descent policy optimisation on token policies (the on-policy "multistep-SGD" MDPO).

    Paper: M. Tomar, L. Shani, Y. Efroni, M. Ghavamzadeh, "Mirror Descent Policy Optimization",
    https://arxiv.org/abs/2005.09814 (on-policy MDPO: several SGD steps per iteration on the
    linearised objective plus ``KL / t_k``; equation numbers not verified). Verified against the official code,
    github.com/manantomar/Mirror-Descent-Policy-Optimization ``mdpo_on/mdpo.py`` (method
    ``multistep-SGD``): ``surrgain = mean(ratio * atarg) - meankl / lr_now`` with ``meankl`` the mean of
    ``policy_pi.kl(old_policy)`` (direction new || old), ``lr_now = 1 - (iters_so_far - 1) / n_updates``
    (``iters_so_far`` counts from 0), ``sgd_steps = 5`` full-batch Adam steps per iteration, then
    old <- new. Per token:

        L_it = -A_it r_it + KL(pi_theta(. | s_it) || pi_k(. | s_it)) / t_k,   token mean

    LM mapping (deviations): a state is a response prefix, ``pi_k`` the step's behaviour policy, the
    advantage the part the preset picks (GRPO's group z-score for outcome rewards; the paper
    standardises GAE over the batch); no clipping (the paper's point).

    ``kl="exact"`` is the KL over the whole vocabulary: it needs the current logits
    (``needs_logits``) and ``pi_k``'s log-probabilities over the vocabulary at every response position,
    ``batch.extras["old_full_logprobs"]`` [N, T, V] (``needs_old_full_logprobs``), which the online
    loop fills per micro-batch from a frozen copy of the step-start weights
    (``anypo.rollout.old_pass.StepAnchor``; on-policy only). It is computed in chunks with a
    recomputing backward. ``kl="sampled"`` (default,
    runs anywhere) estimates the same KL from the sampled tokens, which come from ``pi_k``:
    ``r log r - r + 1`` (unbiased for KL(pi_theta || pi_k) since ``E_pi_k[r log r] = KL`` and
    ``E_pi_k[r] = 1``; non-negative); an implementation choice, UNVERIFIED as MDPO-faithful.

    ``t_k``: with ``total_iterations = K > 0`` the part is stateful: its state
    ``{"optimizer_steps": n}`` (a plain dict, ``batch.part_state``) counts optimizer steps and the
    iteration is ``k = n // updates_per_iteration``; without a state (a loop that does not hand one
    over) ``k = 0``. ``K = 0``: ``t_k = 1``.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``response_mask`` [N, T]; ``logits`` and
    ``extras["old_full_logprobs"]`` [N, T, V] (``T`` of the extras may be longer) -> 0-d loss.
    """

    aggregation: Aggregation = "token_mean"
    kl: Literal["sampled", "exact"] = "sampled"
    """exact: KL over the vocabulary (needs logits and extras['old_full_logprobs']); sampled: r log r - r + 1."""
    total_iterations: int = 0
    """K of t_k = 1 - (k - 1) / K (the run's training steps); 0: t_k = 1 (KL weight 1) throughout."""
    updates_per_iteration: int = 5
    """Optimizer steps per iteration (ppo_epochs x mini-batches; MDPO's sgd_steps = 5), to read k from the state."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl not in ("sampled", "exact"):
            raise ValueError(f"MDPOLM.kl must be 'sampled' or 'exact', got {self.kl!r}")
        if self.total_iterations < 0:
            raise ValueError(f"MDPOLM.total_iterations must be >= 0 (0: t_k = 1), got {self.total_iterations}")
        if self.updates_per_iteration < 1:
            raise ValueError(f"MDPOLM.updates_per_iteration must be >= 1, got {self.updates_per_iteration}")

    @property
    def needs_logits(self) -> bool:
        return self.kl == "exact"

    @property
    def needs_old_full_logprobs(self) -> bool:
        """The loop must put pi_k's log-probs over the vocabulary in extras['old_full_logprobs']."""
        return self.kl == "exact"

    @property
    def stateful(self) -> bool:
        """The t_k schedule counts iterations across steps."""
        return self.total_iterations > 0

    def init_state(self) -> dict[str, Any]:
        return {"optimizer_steps": 0}

    def update_state(self, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """Called after every optimizer step: one more step of the current iteration."""
        state["optimizer_steps"] = int(state.get("optimizer_steps", 0)) + 1


@POLICY_LOSSES.register("mdpo_lm", config=MDPOLM)
def mdpo_lm(out: PolicyOutput, batch: RolloutBatch, cfg: MDPOLM) -> LossOutput:
    """MDPO: ``L = -A r + KL(pi_theta || pi_k) / t_k`` per token, token mean.

    Args:
        out: ``logprobs [N, T]`` with grad; ``logits [N, T, V]`` for ``kl="exact"``.
        batch: ``old_logprobs``, ``advantages``, ``response_mask`` [N, T]; ``extras["old_full_logprobs"]``
            for ``kl="exact"``; ``part_state`` (when the loop hands one over) for the ``t_k`` schedule.
        cfg: KL form, schedule, aggregation.

    Returns:
        0-d loss and ``mdpo/kl`` (token mean of the KL), ``mdpo/step_size`` (``t_k``),
        ``policy/ratio_*``, ``policy/approx_kl``, ``policy/loss``.
    """
    lp, old, adv, mask = policy_inputs(out, batch)
    log_r = log_ratio(lp, old)  # [N, T]
    r = log_r.exp()
    if cfg.kl == "exact":
        N, T = mask.shape
        full = batch.extras.get(OLD_FULL_LOGPROBS)
        if out.logits is None or full is None:
            raise ValueError(
                f"MDPOLM(kl='exact') needs PolicyOutput.logits and batch.extras[{OLD_FULL_LOGPROBS!r}] [N, T, V] (pi_k's "
                "log-probs over the vocabulary; needs_logits, needs_old_full_logprobs): the loop must provide them, "
                "or use kl='sampled'"
            )
        if full.shape[0] != N or full.shape[1] < T or full.shape[2] != out.logits.shape[-1]:
            raise ValueError(
                f"MDPOLM: extras[{OLD_FULL_LOGPROBS!r}] {tuple(full.shape)} does not cover logits {tuple(out.logits.shape)}"
            )
        kl = exact_kl(out.logits, full[:, :T], mask).to(lp.dtype)  # [N, T]
    else:
        kl = r * log_r - r + 1.0  # [N, T] estimate on tokens sampled from pi_k
    state = getattr(batch, "part_state", None)
    k = int(state.get("optimizer_steps", 0)) // cfg.updates_per_iteration if state else 0
    t_k = mdpo_step_size(k, cfg.total_iterations)
    loss_mat = -adv * r + kl / t_k  # [N, T]
    metrics = ratio_metrics(log_r, mask)
    metrics["mdpo/kl"] = float(masked_mean(kl.detach(), mask))
    metrics["mdpo/step_size"] = t_k
    return finish(loss_mat, mask, batch, cfg, metrics, reductions={"mdpo/step_size": "max"})
