"""SDPO: the policy distilled toward its own feedback-conditioned distribution (self-distillation).

Notation: ``lp`` [N, T] the current (student) log-probs of the sampled tokens ``o_it`` given the
original prompt ``q``; ``lt`` [N, T] the teacher's log-probs of the same tokens given the *reprompt*
``q'`` (the prompt with a successful sibling's answer and / or the verifier's feedback);
``m`` the response mask; ``g_i`` 1 for rows that got a reprompt (a success in their group or
feedback), 0 otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from anypo.losses.common import LOG_RATIO_CLAMP, POLICY_LOSSES, PolicyLossConfig
from anypo.ops import zero_masked
from anypo.types import LossOutput, PolicyOutput, RolloutBatch

__all__ = [
    "DISTILL_TOKENS",
    "REPROMPTED",
    "SDPO",
    "TEACHER_LOGPROBS",
    "TEACHER_PROMPT",
    "TEACHER_TOPK_LOGPROBS",
    "TOPK_IDS",
    "distill_divergence",
    "ema_update",
    "sdpo",
    "topk_with_tail",
]

TEACHER_PROMPT = "sdpo_teacher_prompt"
"""``extras`` key (list of N token-id lists): each row's teacher prompt (the chat-templated reprompt),
written by the ``sdpo_reprompt`` rollout part (``anypo.rollout.reprompt``)."""
REPROMPTED = "sdpo_reprompted"
"""``extras`` key (list of N bools): the row got a reprompt (``g_i``); only those rows are distilled."""
TEACHER_LOGPROBS = "sdpo_teacher_logprobs"
"""``extras`` key, [N, T]: the teacher's log-prob of each sampled token under the reprompt (0 off the
distilled rows); the behaviour pass fills it (``anypo.rollout.old_pass.teacher_pass``)."""
TOPK_IDS = "sdpo_topk_ids"
"""``extras`` key, [N, T, K] long: the student's top-K token ids at each position (step start)."""
TEACHER_TOPK_LOGPROBS = "sdpo_teacher_topk_logprobs"
"""``extras`` key, [N, T, K]: the teacher's log-probs of the ``TOPK_IDS`` tokens."""
DISTILL_TOKENS = "sdpo_distill_tokens"
"""``extras`` key (a float): distilled tokens ``sum m g`` of the whole mini-batch, written by
``SDPO.prepare_minibatch`` so that every micro-batch divides by the same count."""


@dataclass(frozen=True)
class SDPO(PolicyLossConfig):
    """SDPO: self-distillation from a feedback-conditioned self-teacher, replacing the policy-gradient loss.

    Paper: "Reinforcement Learning via Self-Distillation" (SDPO), https://arxiv.org/abs/2601.20802.
    Formulas from the official code, github.com/lasgroup/SDPO (commit 0e6d510):
    ``verl/trainer/ppo/core_algos.py::compute_self_distillation_loss``, ``verl/workers/actor/dp_actor.py``
    (teacher forward under ``torch.no_grad``, ``TrustRegionTeacher``, ``_update_teacher``),
    ``verl/trainer/ppo/ray_trainer.py::_maybe_build_self_distillation_batch`` (the reprompt: our
    ``sdpo_reprompt`` rollout part), ``verl/workers/config/actor.py::SelfDistillationConfig``. Per token,
    with ``s`` / ``t`` the student's / teacher's log-probs over the distilled support:

        topk > 0 (full-logit, top-K): support = the student's K most likely tokens (+ a tail bucket
            log(1 - sum_K p) with add_tail, else both renormalised over the K)
            alpha = 0: KL(t || s) = sum e^t (t - s);  alpha = 1: KL(s || t) = sum e^s (s - t)
            0 < alpha < 1: M = log((1 - alpha) e^s + alpha e^t);
                           loss = (1 - alpha) KL(s || M) + alpha KL(t || M)     (generalised JSD)
        topk = 0 (token level, alpha must be 1): loss_t = sg(lp_t - lt_t) * lp_t
        is_clip: loss_t *= min(exp(clamp(sg(lp - old), -20, 20)), is_clip)
        L = sum_{i,t} loss_it m_it g_i / sum_{i,t} m_it g_i          (mean over the distilled tokens)

    The teacher (no gradient) is the EMA of the policy (``teacher="ema"``: starts at the initial
    policy, ``theta_T <- (1 - u) theta_T + u theta`` once per training step that took an optimizer
    step; ``u = 0`` keeps the initial policy, the reference teacher) or the trust-region teacher
    (``teacher="trust_region"``: logits ``lerp(z_ref, z_theta, u)`` with ``z_ref`` from the frozen
    initial weights). The advantages are computed (and logged) but unused, as in the official code.

    **Inputs from the loop** (``needs_old_teacher_logprobs``): the behaviour pass
    (``anypo.rollout.old_pass.teacher_pass``) runs, with no gradient, on the rows with a reprompt only:
    the policy over the original prompt (top-K ids only), and the teacher weights over
    ``extras["sdpo_teacher_prompt"]`` + the same response tokens, ``chunk`` positions at a time; it
    stores ``extras["sdpo_topk_ids"]`` / ``["sdpo_teacher_topk_logprobs"]`` [N, T, K] and
    ``["sdpo_teacher_logprobs"]`` [N, T]. Nothing of size [N, T, V] exists. The full-logit form
    (``topk > 0``) also needs the student's logits in the loss (``needs_logits``: [n, V] of one
    micro-batch, as any training forward holds). The teacher weights are this part's state
    (``stateful``, in checkpoints); the EMA step after a training step is applied lazily at the next
    step's behaviour pass (the same weights: nothing uses the teacher in between).

    Deviations: the distillation over the whole vocabulary (the code's default ``distillation_topk=None``)
    would need the teacher's [N, T, V]: this part distils over the student's top-K (the paper's
    runs use K = 100, ``experiments/generalization/run_sdpo_all.sh``); the student's top-K ids are
    those of the step start (the code: of the current student; the same at the one on-policy update
    of the recipe, mini-batch = batch); the trust-region teacher's ``z_theta`` is that of the step start
    (the code: the current weights); the mean over distilled tokens uses the whole mini-batch's count
    (the code: each micro-batch's own count, scaled by 1 / gradient-accumulation, which makes the loss
    depend on the micro-batch size). The default config is the token-level form (the code's
    ``full_logit_distillation=False``, which requires ``alpha=1``) so that the part runs without the
    student's logits; the ``sdpo`` preset uses the paper's top-K JSD.

    Shapes: ``logprobs``, ``old_logprobs``, ``response_mask`` [N, T]; ``logits`` [N, T, V] (top-K form);
    extras as above (their ``T`` may be longer) -> 0-d loss.
    """

    aggregations: ClassVar[tuple[str, ...]] = ("token_mean",)
    """The mean over the distilled tokens (the code's token-mean over its distillation mask)."""
    topk: int = 0
    """K of the top-K full-logit distillation (the paper's runs: 100); 0: the token-level form."""
    add_tail: bool = True
    """Top-K: append the tail bucket log(1 - sum_K p) (distillation_add_tail); False renormalises over the K."""
    alpha: float = 1.0
    """0: KL(teacher || student) (the code's default); 1: KL(student || teacher); between: generalised JSD."""
    is_clip: float | None = None
    """Importance weight min(exp(sg(lp - old)), is_clip) per token (sdpo.yaml: 2.0); None disables."""
    teacher: Literal["ema", "trust_region"] = "ema"
    """ema: EMA of the policy (starts at the initial policy); trust_region: lerp(initial, current) logits."""
    teacher_update_rate: float = 0.05
    """u: the EMA rate per training step (0: the initial policy throughout), or the trust-region mixing coefficient."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.topk < 0:
            raise ValueError(f"SDPO.topk must be >= 0 (0: the token-level form), got {self.topk}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"SDPO.alpha must be in [0, 1], got {self.alpha}")
        if self.topk == 0 and self.alpha != 1.0:
            raise ValueError(
                f"SDPO.alpha is {self.alpha}: the token-level form (topk=0) supports only alpha=1 (reverse KL); "
                "set topk > 0 (e.g. 100) for forward KL or JSD"
            )
        if self.is_clip is not None and not self.is_clip > 0:
            raise ValueError(f"SDPO.is_clip must be positive or None, got {self.is_clip}")
        if self.teacher not in ("ema", "trust_region"):
            raise ValueError(f"SDPO.teacher must be 'ema' or 'trust_region', got {self.teacher!r}")
        if not 0.0 <= self.teacher_update_rate <= 1.0:
            raise ValueError(f"SDPO.teacher_update_rate must be in [0, 1], got {self.teacher_update_rate}")

    @property
    def needs_logits(self) -> bool:
        """The top-K form reads the student's log-probs of the K tokens from the logits."""
        return self.topk > 0

    @property
    def needs_old_teacher_logprobs(self) -> bool:
        """The behaviour pass must fill the teacher's log-probs under the reprompt (``teacher_pass``)."""
        return True

    @property
    def needs_minibatch_prepare(self) -> bool:
        """The mean over distilled tokens needs the whole mini-batch's count (``prepare_minibatch``)."""
        return True

    def prepare_minibatch(self, mini: RolloutBatch, logprobs: Tensor, seed: int) -> None:
        """``mini.extras["sdpo_distill_tokens"]`` = ``sum m g`` over the mini-batch (a float)."""
        mini.extras[DISTILL_TOKENS] = float(_distilled_mask(mini).sum())

    @property
    def stateful(self) -> bool:
        """The teacher's weights (and the pending EMA step) persist across steps and in checkpoints."""
        return True

    def init_state(self) -> dict[str, Any]:
        """``teacher``: None until the first behaviour pass copies the policy's trainable weights."""
        return {"teacher": None, "pending": False, "ema_updates": 0}

    def update_state(self, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """After an optimizer step: the EMA step is due (applied at the next behaviour pass)."""
        state["pending"] = True

    @torch.no_grad()
    def sync_teacher(self, state: dict[str, Any], model: torch.nn.Module) -> None:
        """Bring the teacher weights in ``state`` up to date with ``model`` (the policy at the step start).

        First call: a copy of the trainable weights (the initial policy). Later, with ``teacher="ema"``
        and a pending step: ``theta_T <- (1 - u) theta_T + u theta`` (``ema_update``). The trust-region
        teacher keeps the initial weights."""
        current = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        if state.get("teacher") is None:
            state["teacher"] = {n: p.clone() for n, p in current.items()}
            state["pending"] = False
            return
        if state.get("pending") and self.teacher == "ema" and self.teacher_update_rate > 0:
            ema_update(state["teacher"], current, self.teacher_update_rate)
            state["ema_updates"] = int(state.get("ema_updates", 0)) + 1
        state["pending"] = False


@torch.no_grad()
def ema_update(teacher: dict[str, Tensor], student: dict[str, Tensor], rate: float) -> None:
    """In place, per tensor: ``teacher <- (1 - rate) teacher + rate student`` (the code's ``_update_teacher``)."""
    for n, t in teacher.items():
        t.mul_(1.0 - rate).add_(student[n].to(t.dtype), alpha=rate)


def topk_with_tail(logp: Tensor, add_tail: bool) -> Tensor:
    """[..., K] log-probs -> [..., K + 1] with the tail ``log(1 - sum exp)`` (the sum clamped to
    ``exp(-1e-7)``), or [..., K] renormalised over the K (``add_tail=False``)."""
    log_s = torch.logsumexp(logp, dim=-1, keepdim=True)
    if not add_tail:
        return logp - log_s
    tail = torch.log(-torch.expm1(log_s.clamp(max=-1e-7)))
    return torch.cat([logp, tail], dim=-1)


def distill_divergence(s: Tensor, t: Tensor, alpha: float) -> Tensor:
    """[...] the divergence between student ``s`` and teacher ``t`` log-probs [..., K] (see ``SDPO``)."""
    if alpha == 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if alpha == 1.0:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logaddexp(s + math.log(1.0 - alpha), t + math.log(alpha))
    kl_s = (s.exp() * (s - m)).sum(-1)
    kl_t = (t.exp() * (t - m)).sum(-1)
    return (1.0 - alpha) * kl_s + alpha * kl_t


def _distilled_mask(batch: RolloutBatch) -> Tensor:
    """[N, T] bool: response tokens of rows with a reprompt."""
    flags = batch.extras.get(REPROMPTED)
    if flags is None:
        raise ValueError(
            f"sdpo needs batch.extras[{REPROMPTED!r}] (which rows got a reprompt): use the sdpo_reprompt rollout "
            "part (AlgoConfig.rollout=SDPOReprompt(...), as the sdpo preset does)"
        )
    g = torch.as_tensor([bool(f) for f in flags], dtype=torch.bool) if not isinstance(flags, Tensor) else flags.bool()
    return (batch.response_mask != 0) & g[:, None]


def _extra(batch: RolloutBatch, key: str, N: int, T: int) -> Tensor:
    x = batch.extras.get(key)
    if x is None:
        raise ValueError(
            f"sdpo needs batch.extras[{key!r}] (the teacher under the reprompt; needs_old_teacher_logprobs): the "
            "loop's behaviour pass fills it (anypo.rollout.old_pass.teacher_pass)"
        )
    x = torch.as_tensor(x)
    if x.shape[0] != N or x.shape[1] < T:
        raise ValueError(f"sdpo: extras[{key!r}] has shape {tuple(x.shape)}, the batch [{N}, {T}]")
    return x[:, :T]


@POLICY_LOSSES.register("sdpo", config=SDPO)
def sdpo(out: PolicyOutput, batch: RolloutBatch, cfg: SDPO) -> LossOutput:
    """SDPO's self-distillation loss (see ``SDPO``): mean over distilled tokens of the per-token divergence.

    Args:
        out: ``logprobs [N, T]`` with grad; ``logits [N, T, V]`` (temperature-scaled) for ``topk > 0``.
        batch: ``response_mask``, ``old_logprobs`` (with ``is_clip``) [N, T]; extras ``sdpo_reprompted``,
            ``sdpo_teacher_logprobs``, for ``topk > 0`` ``sdpo_topk_ids`` / ``sdpo_teacher_topk_logprobs``,
            and ``sdpo_distill_tokens`` (``prepare_minibatch``).
        cfg: the distillation settings.

    Returns:
        0-d loss and ``policy/loss``, ``sdpo/distilled_frac`` (share of the mini-batch's response
        tokens distilled), ``sdpo/teacher_gap`` (mean over distilled tokens of ``lt - lp``),
        ``sdpo/is_weight_mean``; with ``topk > 0`` also ``sdpo/student_support_entropy`` and
        ``sdpo/teacher_support_entropy``: the mean over distilled tokens of each one's entropy over the
        distilled support (the K buckets, + the tail), which says whether the teacher the student is
        pulled toward is flatter or sharper than the student.
    """
    lp = out.logprobs
    N, T = lp.shape
    if tuple(batch.response_mask.shape) != (N, T):
        raise ValueError(f"PolicyOutput.logprobs has shape {(N, T)}, response_mask {tuple(batch.response_mask.shape)}")
    dm = _distilled_mask(batch)[:, :T].to(lp.dtype)  # m * g
    total = batch.extras.get(DISTILL_TOKENS)
    if total is None:
        raise ValueError(
            f"sdpo needs batch.extras[{DISTILL_TOKENS!r}] (the mini-batch's distilled token count): the loop calls "
            "SDPO.prepare_minibatch once per mini-batch (needs_minibatch_prepare)"
        )
    denom = max(float(total), 1.0)
    lp = zero_masked(lp, dm)
    lt = zero_masked(_extra(batch, TEACHER_LOGPROBS, N, T).to(lp.dtype), dm)
    support_entropy: dict[str, float] = {}  # top-K form: sums over distilled tokens, divided below
    if cfg.topk > 0:
        if out.logits is None:
            raise ValueError("sdpo with topk > 0 needs PolicyOutput.logits (needs_logits): the loop must provide them")
        ids = _extra(batch, TOPK_IDS, N, T).long()
        tk = _extra(batch, TEACHER_TOPK_LOGPROBS, N, T).to(lp.dtype)
        keep = dm.bool()
        z = out.logits[keep].to(lp.dtype)  # [n, V], temperature-scaled
        s = z.gather(-1, ids[keep]) - torch.logsumexp(z, dim=-1, keepdim=True)  # [n, K]
        s, t = topk_with_tail(s, cfg.add_tail), topk_with_tail(tk[keep], cfg.add_tail)
        div = distill_divergence(s, t, cfg.alpha)
        per_tok = lp.new_zeros(N, T).masked_scatter(keep, div)
        support_entropy = {  # the entropy over the K (+ tail) buckets
            "sdpo/student_support_entropy": float(-(s.exp() * s).sum().detach()),
            "sdpo/teacher_support_entropy": float(-(t.exp() * t).sum()),
        }
    else:
        per_tok = (lp - lt).detach() * lp
    w = torch.ones_like(lp)
    if cfg.is_clip is not None:
        old = zero_masked(batch.require("old_logprobs", "the behaviour log-probs (is_clip)").to(lp.dtype), dm)
        w = torch.exp((lp - old).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).clamp(max=cfg.is_clip) * dm
    loss = (per_tok * w * dm).sum() / denom
    n_tok = max(batch.scale().num_tokens, 1.0)
    metrics = {k: v / denom for k, v in support_entropy.items()}
    metrics |= {
        "policy/loss": float(loss.detach()),
        "sdpo/distilled_frac": float(dm.sum()) / n_tok,
        "sdpo/teacher_gap": float(((lt - lp).detach() * dm).sum()) / denom,
        "sdpo/is_weight_mean": float((w * dm).sum()) / denom,
    }
    return LossOutput(loss=loss, metrics=metrics, reductions={k: "sum" for k in metrics})
