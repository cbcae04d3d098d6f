"""Tensor operations shared by the parts: masked statistics, group statistics, log-probs, KL, and
the one loss aggregation.

Shapes use the fixed symbols of ``anypo.types``: ``N`` sequences, ``T`` padded response tokens,
``V`` vocabulary size, ``K`` distinct groups. Masks may be bool, integer or float (0/1); every
function returns the float dtype of its value input.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from anypo import onednn
from anypo.types import LossScale

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "KLEstimator",
    "aggregate",
    "entropy_from_logits",
    "group_reduce",
    "group_stats",
    "kl_estimate",
    "last_token_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "zero_masked",
]

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
"""How a per-token loss matrix becomes a scalar; see :func:`aggregate`."""
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)

KLEstimator = Literal["k1", "k2", "k3"]
"""Per-token estimators of KL(pi || pi_ref) on sampled tokens; see :func:`kl_estimate`."""

# Guards a division by a count that may be 0 (an all-padding row); the numerator is then 0 too.
_TINY = 1e-8


# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------


def zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with 0 wherever ``mask`` is 0 (padding may hold inf/nan, e.g. -inf log-probs).

    A ``where``, not ``x * mask``: ``0 * inf`` is nan, and the gradient of ``where`` at the masked
    positions is exactly 0 whatever ``x`` holds there.
    """
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is 1.

    Args:
        x: values, any shape.
        mask: same shape as ``x`` (bool, int or float 0/1).
        dim: dimension to reduce; ``None`` reduces everything to a 0-d tensor.

    Returns:
        The masked sum, in the dtype of ``x``.
    """
    xm = zero_masked(x, mask) * mask.to(x.dtype)
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 where there are none).

    Args:
        x: values, any shape.
        mask: same shape as ``x``.
        dim: dimension to reduce; ``None`` reduces everything.

    Returns:
        The masked mean, in the dtype of ``x``.
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(_TINY)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries of ``x`` (0-d).

    ``var = sum(m * (x - mu)^2) / n``, times ``n / (n - 1)`` when ``unbiased`` (and ``n > 1``),
    with ``n = sum(m)`` and ``mu`` the masked mean.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if float(n) > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, unbiased: bool = True, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` by the mean and variance of its masked entries.

    ``(x - mu) / sqrt(var + eps)`` (``+ mu`` back when ``shift_mean`` is False). Positions outside
    the mask are transformed too but carry no weight in the statistics; multiply by the mask to zero
    them.

    Args:
        x: values, any shape, e.g. [N, T].
        mask: same shape as ``x``.
        unbiased: use the unbiased (n - 1) variance, as verl's ``masked_whiten``.
        shift_mean: subtract the mean (True) or keep it (False).
        eps: added to the variance.

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=unbiased)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def last_token_index(mask: Tensor) -> Tensor:
    """[N] index of the last position where ``mask`` [N, T] is 1 (-1 for an empty row)."""
    m = mask != 0
    T = m.shape[-1]
    pos = torch.arange(T, device=m.device).expand_as(m)
    return torch.where(m, pos, torch.full_like(pos, -1)).amax(dim=-1)


# ---------------------------------------------------------------------------------------------
# Group statistics (samples of one prompt share a group id; ids need not be contiguous)
# ---------------------------------------------------------------------------------------------


def group_reduce(x: Tensor, group_ids: Tensor, reduce: Literal["sum", "mean", "amax", "amin"]) -> Tensor:
    """Reduce ``x`` within each group and broadcast the result back to every member.

    Args:
        x: [N] values.
        group_ids: [N] integer group ids (arbitrary, e.g. ``[7, 7, 3, 3, 42]``).
        reduce: ``sum``, ``mean``, ``amax`` or ``amin``.

    Returns:
        [N] the reduction of each sample's group, in the dtype of ``x``.
    """
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N] dense ids in 0..K-1
    K = int(inv.max()) + 1 if inv.numel() else 0
    out = x.new_zeros(K).scatter_reduce(0, inv, x, reduce=reduce, include_self=False)  # [K]
    return out[inv]  # [N]


def group_stats(x: Tensor, group_ids: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group mean, standard deviation and size, broadcast back to every sample.

    ``mean_g = sum_{j in g} x_j / n_g``; ``std_g = sqrt(sum_{j in g} (x_j - mean_g)^2 / (n_g - 1))``
    (``/ n_g`` when not ``unbiased``). A group of one sample has std 0 (not NaN), so a z-score of it
    is 0.

    Args:
        x: [N] values (e.g. rewards).
        group_ids: [N] integer ids, not necessarily contiguous or sorted.
        unbiased: use ``n_g - 1`` (as ``torch.std`` and verl) instead of ``n_g``.

    Returns:
        ``(mean [N], std [N], count [N])`` in the dtype of ``x``.
    """
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N] dense ids in 0..K-1
    K = int(inv.max()) + 1 if inv.numel() else 0
    count = x.new_zeros(K).index_add_(0, inv, torch.ones_like(x))  # [K]
    mean = x.new_zeros(K).index_add_(0, inv, x) / count  # [K]
    # a group of equal values has exactly that mean (a rounded sum / n may be off by an ulp, which a
    # z-score would blow up to a spurious non-zero advantage)
    gmax = x.new_zeros(K).scatter_reduce(0, inv, x, reduce="amax", include_self=False)
    gmin = x.new_zeros(K).scatter_reduce(0, inv, x, reduce="amin", include_self=False)
    mean = torch.where(gmax == gmin, gmax, mean)
    sq = x.new_zeros(K).index_add_(0, inv, (x - mean[inv]) ** 2)  # [K]
    denom = (count - 1).clamp_min(1) if unbiased else count
    std = (sq / denom).sqrt()  # [K]; sq == 0 for singletons, so std == 0
    return mean[inv], std[inv], count[inv]


# ---------------------------------------------------------------------------------------------
# Log-probabilities, entropy, KL
# ---------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: Tensor, ids: Tensor) -> Tensor:
    """Log-probabilities of ``ids`` under ``softmax(logits)``, without a [N, T, V] log-softmax.

    ``log p(id) = logits[id] - logsumexp(logits)``. Autograd keeps no extra [N, T, V] tensor (a
    log-softmax would save its output). Half-precision logits are processed one row at a time in
    float32, which bounds the temporary copy to one [T, V] slice and avoids bf16 rounding of the
    normaliser.

    Args:
        logits: [N, T, V] raw logits.
        ids: [N, T] token ids (long).

    Returns:
        [N, T] log-probabilities: float32 for half/bfloat16 logits, else the dtype of ``logits``.
    """
    ids = ids.long().unsqueeze(-1)  # [N, T, 1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        rows = []
        for row, row_ids in zip(logits, ids, strict=True):  # row: [T, V]
            row32 = row.float()
            rows.append(row32.gather(-1, row_ids).squeeze(-1) - torch.logsumexp(row32, dim=-1))
        return torch.stack(rows)  # [N, T]
    return logits.gather(-1, ids).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [N, T]


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` at every position.

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v`` (equal to ``-sum p log p``, without a log of 0).

    Args:
        logits: [N, T, V].

    Returns:
        [N, T] entropy in nats, in the dtype of ``logits``.
    """
    p = torch.softmax(logits, dim=-1)  # [N, T, V]
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


class _LinearLogprobs(torch.autograd.Function):
    """log softmax(h W^T + b)[target] / temperature, chunked; the backward reuses the forward's
    softmax where it fits in ``stash`` bytes, and recomputes the logits where it does not."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, h, weight, bias, targets, temperature, chunk, want_entropy, stash):
        n, V, acc = h.shape[0], weight.shape[0], _acc_dtype(h)
        lp = torch.empty(n, dtype=acc, device=h.device)
        lse = torch.empty(n, dtype=acc, device=h.device)
        ent = torch.empty(n, dtype=acc, device=h.device) if want_entropy else None
        # the softmax of every row, written chunk by chunk, when it fits the budget
        probs = torch.empty(n, V, dtype=acc, device=h.device) if n * V * acc.itemsize <= stash else None
        for s in range(0, n, chunk):
            z = _chunk_logits(h[s : s + chunk], weight, bias, temperature)  # [c, V] in the accumulation dtype
            target_z = z.gather(-1, targets[s : s + chunk, None]).squeeze(-1)
            m = z.amax(-1, keepdim=True)
            z.sub_(m)  # z - max: exp cannot overflow
            if probs is not None:
                e = probs[s : s + chunk]
            elif ent is not None:
                e = torch.empty_like(z)  # z is still needed for the entropy
            else:
                e = z  # exp in place
            torch.exp(z, out=e)
            total = e.sum(-1, keepdim=True)
            lse_c = (m + total.log()).squeeze(-1)
            lp[s : s + chunk] = target_z - lse_c
            lse[s : s + chunk] = lse_c
            if ent is not None:  # H = lse - sum_v p_v z_v = log(total) - sum_v e_v (z_v - max) / total
                dot = (e.unsqueeze(1) @ z.unsqueeze(2)).view(-1, 1)  # row-wise sum of e * z, no [c, V] temporary
                ent[s : s + chunk] = (total.log() - dot / total).squeeze(-1)
            if probs is not None:
                e.div_(total)
        ctx.save_for_backward(h, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk, ctx.probs = temperature, chunk, probs
        if ent is None:
            return lp, lp.new_zeros(0)
        ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_lp, _grad_ent):
        h, weight, bias, targets, lse = ctx.saved_tensors
        temperature, probs = ctx.temperature, ctx.probs
        ctx.probs = None  # consumed in place below; a second backward (retain_graph) recomputes
        # with the softmax kept, all rows go through each matmul at once
        chunk = h.shape[0] if probs is not None else ctx.chunk
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        acc = _acc_dtype(h)
        grad_w = grad_b = None
        for s in range(0, h.shape[0], chunk):
            hc, g = h[s : s + chunk], grad_lp[s : s + chunk]
            if probs is not None:
                p = probs
            else:
                p = _chunk_logits(hc, weight, bias, temperature).sub_(lse[s : s + chunk, None]).exp_()
            # d lp / d z = onehot(target) - softmax(z); d z / d logits = 1 / temperature
            dz = p.mul_(-g[:, None].to(p.dtype))
            dz.scatter_add_(-1, targets[s : s + chunk, None], g[:, None].to(dz.dtype))
            if temperature != 1.0:
                dz.div_(temperature)
            if grad_h is not None:
                grad_h[s : s + chunk] = onednn.grad_input(dz.to(weight.dtype), weight).to(h.dtype)  # dz @ W
            if ctx.needs_input_grad[1]:
                part = onednn.grad_weight(dz, hc.to(acc))  # dz^T @ h: [V, H]
                grad_w = part if grad_w is None else grad_w.add_(part)
            if bias is not None and ctx.needs_input_grad[2]:
                grad_b = dz.sum(0) if grad_b is None else grad_b.add_(dz.sum(0))
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _acc_dtype(h: Tensor) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs (gradient checks), else float32."""
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """[c, V] temperature-scaled logits in the accumulation dtype; the matmul runs in the dtype that
    autocast (if on) or ``h`` chose."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else h.dtype
    z = onednn.linear(h.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    return z.to(_acc_dtype(h)).div_(temperature)


def linear_logprobs(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
    chunk: int = 256,
    stash: int = 128 << 20,
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities of ``targets`` under ``softmax((hidden @ weight.T + bias) / temperature)``.

    The LM head and the log-softmax fused and chunked, without the [n, V] logits and softmax that
    autograd keeps for ``log_softmax(head(hidden))`` (800 MB per 1,000 tokens at V = 49k). The
    forward works [chunk, V] at a time. For the backward it
    keeps each chunk's softmax (overwritten in place by the gradient) while their total stays within
    ``stash`` bytes, and otherwise recomputes the chunk's logits from ``hidden``, trading one more
    head matmul for memory. The gradient is the exact one: d log p_y / d z = onehot(y) - softmax(z),
    divided by the temperature.

    Args:
        hidden: [n, H] final hidden states, one per predicted token.
        weight: [V, H] LM head weight; bias: [V] or None.
        targets: [n] token ids to score.
        temperature: the sampling temperature the logits are divided by.
        entropy: also return the entropy of each position's distribution (no gradient: metrics).
        chunk: rows of logits materialised at once.
        stash: bytes of softmax the forward may keep for the backward (0: always recompute). Nothing
            is kept when no gradient is needed.

    Returns:
        log-probs [n] (float32, or float64 for float64 inputs; differentiable) and entropy [n] (same
        dtype, detached) or None.
    """
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    lp, ent = _LinearLogprobs.apply(
        hidden, weight, bias, targets.long(), float(temperature), chunk, entropy, stash if needs_grad else 0
    )
    return lp, (ent if entropy else None)


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the log-probs of tokens sampled from pi.

    With ``d = logprobs - ref_logprobs`` and ``log_rho = -d`` (J. Schulman, "Approximating KL
    Divergence", http://joschu.net/blog/kl-approx.html):

    * ``k1 = d`` (unbiased, high variance, may be negative);
    * ``k2 = d^2 / 2`` (biased, low variance, gradient of the true KL on-policy);
    * ``k3 = exp(log_rho) - 1 - log_rho`` (unbiased, >= 0). As verl's ``low_var_kl``, ``log_rho``
      is clamped to [-20, 20] and the result to [-10, 10] (clamps that stop the gradient outside).

    Args:
        logprobs: [N, T] log-probs of the sampled tokens under pi (the policy).
        ref_logprobs: [N, T] log-probs of the same tokens under pi_ref.
        estimator: ``k1``, ``k2`` or ``k3``.

    Returns:
        [N, T] per-token estimates, in the dtype of ``logprobs``.
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        log_rho = (-d).clamp(-20.0, 20.0)
        return (log_rho.exp() - 1.0 - log_rho).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of k1, k2, k3")


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def aggregate(loss_mat: Tensor, mask: Tensor, mode: str, scale: LossScale, norm_length: float | None = None) -> Tensor:
    """Reduce a per-token loss matrix to the scalar loss, normalised by the mini-batch's counts.

    With ``m`` the mask, ``|o_i| = sum_t m_it``, ``N_seq = scale.num_seqs`` and
    ``N_tok = scale.num_tokens`` (the counts of the whole mini-batch, not of this micro-batch):

    * ``token_mean``: ``sum_it m L / N_tok`` (DAPO);
    * ``seq_mean_token_mean``: ``sum_i (sum_t m L / |o_i|) / N_seq`` (GRPO, GSPO, SAPO);
    * ``seq_mean_token_sum``: ``sum_it m L / N_seq``;
    * ``seq_mean_token_sum_norm``: ``sum_it m L / (N_seq * L_norm)`` (Dr. GRPO, in the paper's sense
      with ``1 / N_seq``; verl divides by ``L_norm`` only). ``L_norm`` is ``norm_length`` if given,
      else ``scale.norm_length``, else the padded length ``T`` of ``loss_mat``.

    Every mode is a sum over sequences of a per-sequence term, so the losses of micro-batches built
    with ``RolloutBatch.select(idx, loss_scale=batch.scale())`` sum to the mini-batch's loss, and
    so do their gradients.

    Args:
        loss_mat: [N, T] per-token loss.
        mask: [N, T] response mask.
        mode: one of :data:`AGGREGATIONS`.
        scale: global counts of the mini-batch (``batch.scale()``).
        norm_length: constant ``L_norm`` for ``seq_mean_token_sum_norm``.

    Returns:
        0-d tensor in the dtype of ``loss_mat``.
    """
    if mode == "token_mean":
        return masked_sum(loss_mat, mask) / max(scale.num_tokens, _TINY)
    if mode == "seq_mean_token_mean":
        lengths = mask.to(loss_mat.dtype).sum(-1).clamp_min(1.0)  # [N]; an empty row adds 0
        return (masked_sum(loss_mat, mask, dim=-1) / lengths).sum() / max(scale.num_seqs, _TINY)
    if mode == "seq_mean_token_sum":
        return masked_sum(loss_mat, mask) / max(scale.num_seqs, _TINY)
    if mode == "seq_mean_token_sum_norm":
        length = norm_length if norm_length is not None else scale.norm_length
        length = float(loss_mat.shape[-1]) if length is None else float(length)
        return masked_sum(loss_mat, mask) / max(scale.num_seqs * length, _TINY)
    raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")
