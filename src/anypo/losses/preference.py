"""Offline preference losses (kind ``preference_loss``): ``fn(out_chosen, out_rejected, batch, cfg)``.

Notation (spec ``preference-selfplay-agentic.md`` section 0): for pair ``i`` with chosen response
``y_w`` and rejected ``y_l``,

* ``log pi(y|x) = sum_t m_t lp_t`` over the response tokens (mask ``m``; padding never counts);
* ``h_w = log pi(y_w|x) - log pi_ref(y_w|x)``, ``h_l`` likewise, and the margin ``d = h_w - h_l``;
* ``r_w = beta h_w``, ``r_l = beta h_l`` are the implicit rewards that the metrics report.

Every loss here is ``L = (1/P) sum_i l_i`` with ``P = batch.num_pairs`` (the mini-batch's global
pair count) or this batch's ``N``, so the losses and gradients of micro-batches sum to the
mini-batch's. The token-mean SFT term of ``rpo`` / ``sft`` divides by ``batch.num_chosen_tokens``
likewise. Metrics (TRL's ``rewards/*`` names, under ``pref/``): ``pref/loss`` (reduction ``sum``),
``pref/reward_chosen``, ``pref/reward_rejected``, ``pref/reward_margin`` (means of ``r_w``, ``r_l``,
``r_w - r_l``), ``pref/accuracy`` (share of pairs with ``r_w > r_l``), ``pref/logps_chosen`` /
``pref/logps_rejected`` (mean sequence log-probs), all ``seq_mean`` over this batch's pairs.

The formulas were checked against TRL's ``DPOTrainer`` (``huggingface/trl`` at ``f2cd5771``,
2026-07-24, and the ``dpo_loss`` before the refactor ``e3b7897c``), not against the papers' full
texts, which could not be read; equation numbers are the ones TRL's comments give. See
``docs/preference_losses.md`` for the table and what is UNVERIFIED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from anypo.ops import zero_masked
from anypo.registry import REGISTRIES
from anypo.types import LossOutput, MetricReduction, PartConfig, PolicyOutput, PreferenceBatch

PREFERENCE_LOSSES = REGISTRIES["preference_loss"]

__all__ = [
    "CDPO",
    "DPO",
    "IPO",
    "PREFERENCE_LOSSES",
    "RPO",
    "APODown",
    "APOZero",
    "BCOPair",
    "ChosenNLL",
    "DiscoPOP",
    "EXOPair",
    "Hinge",
    "NCAPair",
    "Pairs",
    "PreferenceLossConfig",
    "RobustDPO",
    "SPPOHard",
    "WeightedPreference",
    "pair_inputs",
]

SFTReduction = Literal["token_mean", "seq_sum"]

# ---------------------------------------------------------------------------------------------
# Shared scaffold: inputs, normalisers, metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceLossConfig(PartConfig):
    """Fields every reference-based pairwise loss has: the temperature ``beta``."""

    beta: float = 0.1
    """beta: scale of the log-ratios (KL strength); for IPO it is the regulariser tau."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"{type(self).__name__}.beta must be a positive finite number, got {self.beta}")

    @property
    def needs_ref_logprobs(self) -> bool:
        return True


@dataclass
class Pairs:
    """Per-pair sums of one preference batch, all ``[N]`` in the dtype of the policy log-probs.

    Attributes:
        logp_chosen / logp_rejected: ``sum_t m lp`` of the policy (with grad).
        ratio_chosen / ratio_rejected: ``h_w`` / ``h_l`` (policy minus reference), or ``None`` when
            the reference log-probs were not needed.
        len_chosen / len_rejected: number of response tokens.
        tokens_chosen: ``[N, T]`` chosen log-probs, 0 off the mask (for the NLL term).
    """

    logp_chosen: Tensor
    logp_rejected: Tensor
    ratio_chosen: Tensor | None
    ratio_rejected: Tensor | None
    len_chosen: Tensor
    len_rejected: Tensor
    tokens_chosen: Tensor

    @property
    def margin(self) -> Tensor:
        """``d = h_w - h_l`` [N]."""
        return self.ratio_chosen - self.ratio_rejected


def _side(out: PolicyOutput, mask: Tensor, ref: Tensor | None, side: str) -> tuple[Tensor, Tensor | None, Tensor]:
    lp = out.logprobs
    if lp.shape != mask.shape:
        raise ValueError(f"out_{side}.logprobs has shape {tuple(lp.shape)}, {side}_mask {tuple(mask.shape)}")
    tok = zero_masked(lp, mask)  # [N, T]; where(), so -inf/nan padding gives neither nan nor gradient
    ratio = None
    if ref is not None:
        if ref.shape != mask.shape:
            raise ValueError(
                f"PreferenceBatch.ref_{side}_logprobs has shape {tuple(ref.shape)}, {side}_mask {tuple(mask.shape)}"
            )
        ratio = (tok - zero_masked(ref.to(lp.dtype), mask)).sum(-1)  # [N]
    return tok, ratio, mask.to(lp.dtype).sum(-1)


def pair_inputs(
    out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, need_ref: bool = True
) -> Pairs:
    """Check the inputs and reduce them to per-pair sums (see :class:`Pairs`)."""
    n_c, n_r = batch.chosen_mask.shape[0], batch.rejected_mask.shape[0]
    if n_c != n_r:
        raise ValueError(f"chosen_mask has {n_c} pairs but rejected_mask has {n_r}")
    refs: dict[str, Tensor | None] = {"chosen": None, "rejected": None}
    if need_ref:
        for side in refs:
            refs[side] = getattr(batch, f"ref_{side}_logprobs")
            if refs[side] is None:
                raise ValueError(
                    f"PreferenceBatch.ref_{side}_logprobs is None, but this loss needs the reference model's "
                    "log-probs: run the reference pass (or cache them as a dataset column) before the loss"
                )
    tok_c, h_c, len_c = _side(out_chosen, batch.chosen_mask, refs["chosen"], "chosen")
    tok_r, h_r, len_r = _side(out_rejected, batch.rejected_mask, refs["rejected"], "rejected")
    return Pairs(tok_c.sum(-1), tok_r.sum(-1), h_c, h_r, len_c, len_r, tok_c)


def _global_count(value: float | None, local: float, name: str) -> float:
    """The normaliser: the mini-batch's global count if the batch carries one, else its own."""
    if value is None:
        return max(local, 1.0)  # an empty batch has a 0 numerator: loss 0, not nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"PreferenceBatch.{name} must be a positive number, got {value}")
    if value < local:
        raise ValueError(
            f"PreferenceBatch.{name} = {value} is smaller than this batch's own count {local}: it must be the "
            "count of the whole mini-batch the batch belongs to"
        )
    return float(value)


def _pair_mean(x: Tensor, batch: PreferenceBatch) -> Tensor:
    """``sum_i x_i / P`` with the global pair count ``P`` (0-d)."""
    return x.sum() / _global_count(batch.num_pairs, float(x.shape[0]), "num_pairs")


def _chosen_nll(p: Pairs, batch: PreferenceBatch, reduction: SFTReduction) -> Tensor:
    """NLL of the chosen responses, 0-d: ``-sum_it m lp / tokens`` (token_mean, TRL's ``sft``) or
    ``-sum_it m lp / P`` (seq_sum: the sequence NLL ``-log pi(y_w|x)`` averaged over pairs)."""
    if reduction == "token_mean":
        denom = _global_count(batch.num_chosen_tokens, float(p.len_chosen.sum()), "num_chosen_tokens")
        return -p.tokens_chosen.sum() / denom
    return _pair_mean(-p.logp_chosen, batch)


def _mean(x: Tensor) -> float:
    return float(x.mean()) if x.numel() else 0.0


def _finish(loss: Tensor, p: Pairs, beta: float | None, extra: dict[str, float] | None = None) -> LossOutput:
    """Attach the metrics: ``loss`` is already normalised by the global pair (or token) count."""
    metrics = {"pref/loss": float(loss.detach())}
    reductions: dict[str, MetricReduction] = {"pref/loss": "sum"}
    with torch.no_grad():
        seq = {"pref/logps_chosen": _mean(p.logp_chosen), "pref/logps_rejected": _mean(p.logp_rejected)}
        if beta is not None and p.ratio_chosen is not None:
            r_w, r_l = beta * p.ratio_chosen, beta * p.ratio_rejected
            seq |= {
                "pref/reward_chosen": _mean(r_w),
                "pref/reward_rejected": _mean(r_l),
                "pref/reward_margin": _mean(r_w - r_l),
                "pref/accuracy": _mean((r_w > r_l).to(r_w.dtype)),
            }
    metrics |= seq
    reductions |= {k: "seq_mean" for k in seq}
    for k, v in (extra or {}).items():
        metrics[k] = v
        reductions[k] = "sum"  # extra terms are globally normalised partial sums, like the loss
    return LossOutput(loss=loss, metrics=metrics, reductions=reductions)


def _pairwise(per_pair: Tensor, p: Pairs, batch: PreferenceBatch, beta: float) -> LossOutput:
    """The common ending: ``(1/P) sum_i l_i`` and the metrics."""
    return _finish(_pair_mean(per_pair, batch), p, beta)


# ---------------------------------------------------------------------------------------------
# ALGO LOGIC: the losses. Each docstring: paper, formula, defaults, deviations.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPO(PreferenceLossConfig):
    """Direct preference optimisation, the sigmoid (Bradley-Terry) loss.

    Paper: "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    https://arxiv.org/abs/2305.18290, Eq. 7 (recalled, not checked): ``l = -log sigmoid(beta d)``.
    Default ``beta = 0.1`` (Appendix B, as quoted by TRL's paper index). TRL: ``loss_type="sigmoid"``
    (same value on the same batch: the spec's vector 0.620957 is tested).
    """


@PREFERENCE_LOSSES.register("dpo", config=DPO)
def dpo(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: DPO) -> LossOutput:
    """DPO: ``(1/P) sum_i -log sigmoid(beta d_i)``.

    Args:
        out_chosen: ``logprobs [N, T]`` of the chosen responses (with grad).
        out_rejected: ``logprobs [N, T']`` of the rejected responses (with grad).
        batch: masks and reference log-probs of both sides; optional global ``num_pairs``.
        cfg: ``beta``.

    Returns:
        0-d loss and the ``pref/*`` metrics of the module docstring.
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    return _pairwise(-F.logsigmoid(cfg.beta * p.margin), p, batch, cfg.beta)


@dataclass(frozen=True)
class CDPO(PreferenceLossConfig):
    """Conservative DPO: the DPO loss with label smoothing ``eps`` (each label flipped with prob. eps).

    Source: E. Mitchell, "A note on DPO with noisy preferences & relationship to IPO" (2023 note,
    no arXiv id), https://ericmitchell.ai/cdpo.pdf:
    ``l = -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)``.
    TRL: ``loss_type="sigmoid"`` with ``label_smoothing=eps`` (TRL before the DPO refactor
    ``e3b7897c``; the current TRL ``sigmoid`` ignores label smoothing). Default ``eps = 0.1`` is our
    choice (UNVERIFIED: the note's recommended value was not read); ``eps = 0`` is DPO.
    """

    label_smoothing: float = 0.1
    """eps in [0, 0.5): the assumed probability that a preference label is flipped."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"CDPO.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@PREFERENCE_LOSSES.register("cdpo", config=CDPO)
def cdpo(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: CDPO) -> LossOutput:
    """cDPO: ``(1/P) sum_i [-(1 - eps) log sigmoid(beta d_i) - eps log sigmoid(-beta d_i)]``.

    Args: as :func:`dpo`; ``cfg.label_smoothing`` is eps. Returns: 0-d loss and ``pref/*`` metrics.
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    z, eps = cfg.beta * p.margin, cfg.label_smoothing
    return _pairwise(-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z), p, batch, cfg.beta)


@dataclass(frozen=True)
class IPO(PreferenceLossConfig):
    """Identity preference optimisation: regress the log-ratio margin onto ``1 / (2 tau)``.

    Paper: "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    https://arxiv.org/abs/2310.12036, Eq. 17: ``l = (d - 1/(2 tau))^2`` with ``tau`` = ``beta``.
    ``length_normalize=True`` (default, TRL's ``loss_type="ipo"``) divides each sequence log-ratio
    by its token count first: ``l = (h_w/|y_w| - h_l/|y_l| - 1/(2 tau))^2`` (counts clamped at 1);
    TRL says the IPO authors confirmed the paper's results used this form (not checked).
    ``length_normalize=False`` is Eq. 17 as written and the SPPO repo's ``ipo``. Default
    ``tau = 0.1`` is TRL's default (the paper's tau per experiment was not read).
    """

    length_normalize: bool = True
    """Divide each side's log-ratio by its number of response tokens (TRL) before the square."""


@PREFERENCE_LOSSES.register("ipo", config=IPO)
def ipo(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: IPO) -> LossOutput:
    """IPO: ``(1/P) sum_i (d_i - 1/(2 beta))^2``, d optionally per-token normalised.

    Args: as :func:`dpo`; ``cfg.beta`` is tau. Returns: 0-d loss and ``pref/*`` metrics (rewards
    are ``beta h`` without length normalisation, as TRL logs them).
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    d = p.margin
    if cfg.length_normalize:
        d = p.ratio_chosen / p.len_chosen.clamp(min=1.0) - p.ratio_rejected / p.len_rejected.clamp(min=1.0)
    return _pairwise((d - 1.0 / (2.0 * cfg.beta)) ** 2, p, batch, cfg.beta)


@dataclass(frozen=True)
class RPO(PreferenceLossConfig):
    """Regularized preference optimisation: DPO plus an SFT (NLL) term on the chosen responses.

    Paper: "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial
    Regularizer", https://arxiv.org/abs/2405.16436 (Sec. 5; equation number not checked):
    ``L = L_DPO(beta) + w L_SFT``, ``L_SFT`` the NLL of the chosen responses. The authors' code
    (github.com/YSLIU627/Regularized-Preference-Optimization, ``rpo_trainer.py``) computes per pair
    ``L_DPO - eta * beta * log pi(y_w | x)`` with the summed log-probability of the chosen response:
    ``sft_reduction="seq_sum"`` and ``sft_weight = eta * beta`` (the ``rpo`` preset: eta 0.005,
    beta 0.01, so 5e-5). ``sft_reduction="token_mean"`` is TRL's combination
    ``DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1, w])``, the NLL per chosen token of the
    mini-batch. Not TRL's deprecated ``rpo_alpha``, which is Iterative Reasoning PO (arXiv 2404.19733).
    """

    beta: float = 0.01
    sft_weight: float = 0.005
    """w: weight of the SFT term (the paper's eta * beta with sft_reduction="seq_sum", as the rpo preset sets)."""
    sft_reduction: SFTReduction = "token_mean"
    """token_mean: NLL per chosen token (TRL's sft); seq_sum: per chosen sequence, mean over pairs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.sft_weight):
            raise ValueError(f"RPO.sft_weight must be finite, got {self.sft_weight}")
        if self.sft_reduction not in ("token_mean", "seq_sum"):
            raise ValueError(f"RPO.sft_reduction must be 'token_mean' or 'seq_sum', got {self.sft_reduction!r}")


@PREFERENCE_LOSSES.register("rpo", config=RPO)
def rpo(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: RPO) -> LossOutput:
    """RPO: ``(1/P) sum_i -log sigmoid(beta d_i) + eta * NLL(chosen)``.

    Args: as :func:`dpo`; ``batch.num_chosen_tokens`` normalises the token-mean NLL.
    Returns: 0-d loss, ``pref/*`` metrics and ``pref/nll`` (the unweighted NLL term, a partial sum).
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    nll = _chosen_nll(p, batch, cfg.sft_reduction)
    loss = _pair_mean(-F.logsigmoid(cfg.beta * p.margin), batch) + cfg.sft_weight * nll
    return _finish(loss, p, cfg.beta, {"pref/nll": float(nll.detach())})


@dataclass(frozen=True)
class ChosenNLL(PartConfig):
    """The SFT term alone: negative log-likelihood of the chosen responses (TRL ``loss_type="sft"``).

    Used as a term of ``weighted`` (RPO https://arxiv.org/abs/2405.16436, Iterative RPO
    https://arxiv.org/abs/2404.19733 with weight 1, MPO https://arxiv.org/abs/2411.10442).
    ``reduction="token_mean"``: ``-sum_it m lp / (chosen tokens of the mini-batch)``, as TRL's
    cross-entropy over the chosen tokens; ``"seq_sum"``: ``-(1/P) sum_i log pi(y_w,i|x_i)``.
    Needs no reference log-probs and ignores the rejected responses.
    """

    reduction: SFTReduction = "token_mean"
    """token_mean (TRL) or seq_sum (sequence NLL, mean over pairs)."""

    def __post_init__(self) -> None:
        if self.reduction not in ("token_mean", "seq_sum"):
            raise ValueError(f"ChosenNLL.reduction must be 'token_mean' or 'seq_sum', got {self.reduction!r}")


@PREFERENCE_LOSSES.register("sft", config=ChosenNLL)
def sft(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: ChosenNLL) -> LossOutput:
    """SFT on the chosen responses: the NLL of :class:`ChosenNLL`.

    Args: as :func:`dpo` (reference log-probs unused; rejected shapes are still checked).
    Returns: 0-d loss, ``pref/nll`` and ``pref/logps_*``.
    """
    p = pair_inputs(out_chosen, out_rejected, batch, need_ref=False)
    nll = _chosen_nll(p, batch, cfg.reduction)
    return _finish(nll, p, None, {"pref/nll": float(nll.detach())})


@dataclass(frozen=True)
class Hinge(PreferenceLossConfig):
    """Hinge loss on the reference-normalised margin (SLiC-HF calibration / RSO's hinge-norm).

    Papers: "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    https://arxiv.org/abs/2305.10425, and "Statistical Rejection Sampling Improves Preference
    Optimization", https://arxiv.org/abs/2309.06657 (hinge-norm loss):
    ``l = max(0, 1 - beta d)`` with ``beta`` = RSO's gamma. Deviation from SLiC-HF: SLiC's
    calibration loss uses the raw log-likelihoods without a reference model and adds a
    regularisation term; we follow TRL's ``loss_type="hinge"``, which is RSO's hinge-norm.
    Default ``beta = 0.05`` (RSO's gamma as quoted by TRL's paper index; TRL's own default is 0.1).
    """

    beta: float = 0.05


@PREFERENCE_LOSSES.register("hinge", config=Hinge)
def hinge(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: Hinge) -> LossOutput:
    """Hinge: ``(1/P) sum_i relu(1 - beta d_i)``. Args: as :func:`dpo`. Returns: loss and ``pref/*``."""
    p = pair_inputs(out_chosen, out_rejected, batch)
    return _pairwise(torch.relu(1.0 - cfg.beta * p.margin), p, batch, cfg.beta)


@dataclass(frozen=True)
class RobustDPO(PreferenceLossConfig):
    """Robust DPO (rDPO): the DPO loss de-biased for labels flipped at rate eps (Chowdhury et al.).

    Paper: "Provably Robust DPO: Aligning Language Models with Noisy Feedback",
    https://arxiv.org/abs/2403.00409 (equation number not checked):
    ``l = [(1 - eps) L(d) - eps L(-d)] / (1 - 2 eps)`` with ``L(d) = -log sigmoid(beta d)``, an
    unbiased estimate of the clean DPO loss. Unlike cDPO the flipped term is subtracted, so ``l``
    can be negative. Defaults ``beta = 0.1``, ``eps = 0.1`` (Sec. B / Sec. 6 as quoted by TRL's
    paper index). TRL: ``loss_type="robust"`` with ``label_smoothing=eps``.
    """

    label_smoothing: float = 0.1
    """eps in [0, 0.5): the flip rate of the preference labels."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"RobustDPO.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@PREFERENCE_LOSSES.register("robust", config=RobustDPO)
def robust(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: RobustDPO) -> LossOutput:
    """rDPO: ``(1/P) sum_i [(1-eps)(-log sig(beta d_i)) - eps(-log sig(-beta d_i))] / (1-2eps)``.

    Args: as :func:`dpo`. Returns: 0-d loss and ``pref/*`` metrics.
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    z, eps = cfg.beta * p.margin, cfg.label_smoothing
    per_pair = ((1 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1 - 2 * eps)
    return _pairwise(per_pair, p, batch, cfg.beta)


@dataclass(frozen=True)
class BCOPair(PreferenceLossConfig):
    """Binary classifier optimisation on pairs: chosen classified as 1, rejected as 0.

    Paper: "Binary Classifier Optimization for Large Language Model Alignment",
    https://arxiv.org/abs/2404.04656 (equation number not checked):
    ``l = -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta))`` with ``r = beta h``.
    The paper's reward shift ``delta`` is a running mean of the rewards (TRL kept one before
    ``e3b7897c``); the current TRL ``loss_type="bco_pair"`` drops it (``delta = 0``), and a pure
    function keeps no state, so ``delta`` is a constant here, default 0 (current TRL). Default
    ``beta = 0.01`` (Sec. C as quoted by TRL's paper index). Note that TRL's paper index writes the
    loss as ``-log sigmoid(beta d)``, which is not what its code computes; we follow the code.
    """

    beta: float = 0.01
    delta: float = 0.0
    """Reward shift subtracted from both implicit rewards (the paper's running mean; 0 = TRL)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.delta):
            raise ValueError(f"BCOPair.delta must be finite, got {self.delta}")


@PREFERENCE_LOSSES.register("bco_pair", config=BCOPair)
def bco_pair(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: BCOPair) -> LossOutput:
    """BCO pair: ``(1/P) sum_i [-log sig(r_w - delta) - log sig(delta - r_l)]``.

    Args: as :func:`dpo`. Returns: 0-d loss and ``pref/*`` metrics.
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    r_w, r_l = cfg.beta * p.ratio_chosen, cfg.beta * p.ratio_rejected
    return _pairwise(-F.logsigmoid(r_w - cfg.delta) - F.logsigmoid(cfg.delta - r_l), p, batch, cfg.beta)


@dataclass(frozen=True)
class SPPOHard(PreferenceLossConfig):
    """SPPO with hard win probabilities: regress ``h_w`` onto ``+1/(2 beta)`` and ``h_l`` onto ``-1/(2 beta)``.

    Paper: "Self-Play Preference Optimization for Language Model Alignment",
    https://arxiv.org/abs/2405.00675, Eq. 4.7 of Algorithm 1 with ``P = 1`` for the winner and 0 for
    the loser (TRL's comment): ``l = (h_w - 0.5/beta)^2 + (h_l + 0.5/beta)^2``, ``beta = 1/eta``.
    We follow TRL's ``loss_type="sppo_hard"``: no 1/2 factor and a fixed reference, whereas the
    SPPO repo's ``sppo`` loss has a 1/2 factor, soft win-rates and the previous iterate as reference
    (that is the iterative ``sppo`` method, not this offline loss). Default ``beta = 0.001``
    (Sec. 5 as quoted by TRL's paper index): targets of +-500 nats, squared losses near 5e5.
    """

    beta: float = 0.001


@PREFERENCE_LOSSES.register("sppo_hard", config=SPPOHard)
def sppo_hard(
    out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: SPPOHard
) -> LossOutput:
    """SPPO-hard: ``(1/P) sum_i (h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2``.

    Args: as :func:`dpo`. Returns: 0-d loss and ``pref/*`` metrics.
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    target = 0.5 / cfg.beta
    return _pairwise((p.ratio_chosen - target) ** 2 + (p.ratio_rejected + target) ** 2, p, batch, cfg.beta)


@dataclass(frozen=True)
class NCAPair(PreferenceLossConfig):
    """Noise contrastive alignment (NCA) on pairs: an absolute term keeps the chosen likelihood up.

    Paper: "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    https://arxiv.org/abs/2402.05369 (equation number not checked), with ``K = 2``:
    ``l = -log sigmoid(r_w) - 0.5 log sigmoid(-r_w) - 0.5 log sigmoid(-r_l)``, ``r = beta h``.
    TRL: ``loss_type="nca_pair"``. Default ``beta = 0.01`` (Sec. C as quoted by TRL's paper index).
    """

    beta: float = 0.01


@PREFERENCE_LOSSES.register("nca_pair", config=NCAPair)
def nca_pair(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: NCAPair) -> LossOutput:
    """NCA pair: ``(1/P) sum_i [-log sig(r_w) - 0.5 log sig(-r_w) - 0.5 log sig(-r_l)]``.

    Args: as :func:`dpo`. Returns: 0-d loss and ``pref/*`` metrics.
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    r_w, r_l = cfg.beta * p.ratio_chosen, cfg.beta * p.ratio_rejected
    per_pair = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return _pairwise(per_pair, p, batch, cfg.beta)


@dataclass(frozen=True)
class APOZero(PreferenceLossConfig):
    """Anchored preference optimisation, zero variant: chosen likelihood up, rejected down.

    Paper: "Anchored Preference Optimization and Contrastive Revisions: Addressing
    Underspecification in Alignment", https://arxiv.org/abs/2408.06266, Eq. 7:
    ``l = (1 - sigmoid(r_w)) + sigmoid(r_l)``, ``r = beta h``. For data whose chosen answers are
    better than the model's own outputs. TRL: ``loss_type="apo_zero"``. Default ``beta = 0.1``
    (Sec. 5.2 as quoted by TRL's paper index). Not the iterative ``apo`` method (Accelerated
    Preference Optimization, arXiv 2410.06293), which shares the acronym.
    """


@PREFERENCE_LOSSES.register("apo_zero", config=APOZero)
def apo_zero(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: APOZero) -> LossOutput:
    """APO-zero: ``(1/P) sum_i [1 - sig(r_w) + sig(r_l)]``. Args: as :func:`dpo`. Returns: loss, ``pref/*``."""
    p = pair_inputs(out_chosen, out_rejected, batch)
    r_w, r_l = cfg.beta * p.ratio_chosen, cfg.beta * p.ratio_rejected
    return _pairwise(1.0 - torch.sigmoid(r_w) + torch.sigmoid(r_l), p, batch, cfg.beta)


@dataclass(frozen=True)
class APODown(PreferenceLossConfig):
    """Anchored preference optimisation, down variant: chosen likelihood down, rejected down more.

    Paper: "Anchored Preference Optimization and Contrastive Revisions: Addressing
    Underspecification in Alignment", https://arxiv.org/abs/2408.06266, Eq. 8:
    ``l = sigmoid(r_w) + (1 - sigmoid(beta d))``, ``r = beta h``. For data whose chosen answers are
    worse than the model's own outputs. TRL: ``loss_type="apo_down"``. Default ``beta = 0.1``.
    """


@PREFERENCE_LOSSES.register("apo_down", config=APODown)
def apo_down(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: APODown) -> LossOutput:
    """APO-down: ``(1/P) sum_i [sig(r_w) + 1 - sig(beta d_i)]``. Args: as :func:`dpo`. Returns: loss, ``pref/*``."""
    p = pair_inputs(out_chosen, out_rejected, batch)
    per_pair = torch.sigmoid(cfg.beta * p.ratio_chosen) + 1.0 - torch.sigmoid(cfg.beta * p.margin)
    return _pairwise(per_pair, p, batch, cfg.beta)


@dataclass(frozen=True)
class EXOPair(PreferenceLossConfig):
    """Efficient exact optimisation (EXO) on pairs: reverse KL from the model's pair distribution to
    the smoothed labels.

    Paper: "Towards Efficient Exact Optimization of Language Model Alignment",
    https://arxiv.org/abs/2402.00856, Eq. 16 with ``K = 2``: with ``q_w = sigmoid(beta d)``,
    ``q_l = 1 - q_w`` and the label distribution ``(1 - eps, eps)``,
    ``l = KL(q || p) = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps)``.
    TRL: ``loss_type="exo_pair"`` with ``label_smoothing=eps`` (which must be > 0). Defaults
    ``beta = 0.1`` (Sec. B as quoted by TRL's paper index), ``eps = 1e-3`` (the value TRL says the
    paper recommends). The paper's separate reward temperature does not enter with hard labels.
    """

    epsilon: float = 1e-3
    """eps in (0, 1): label smoothing of the target distribution (log eps must be finite)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"EXOPair.epsilon must be in (0, 1), got {self.epsilon}")


@PREFERENCE_LOSSES.register("exo_pair", config=EXOPair)
def exo_pair(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: EXOPair) -> LossOutput:
    """EXO pair: ``(1/P) sum_i KL((q_w, q_l) || (1 - eps, eps))``. Args: as :func:`dpo`. Returns: loss, ``pref/*``."""
    p = pair_inputs(out_chosen, out_rejected, batch)
    z = cfg.beta * p.margin
    log_qw, log_ql = F.logsigmoid(z), F.logsigmoid(-z)  # stable for any |z|
    per_pair = log_qw.exp() * (log_qw - math.log1p(-cfg.epsilon)) + log_ql.exp() * (log_ql - math.log(cfg.epsilon))
    return _pairwise(per_pair, p, batch, cfg.beta)


@dataclass(frozen=True)
class DiscoPOP(PreferenceLossConfig):
    """DiscoPOP (log-ratio modulated loss, LRML): a blend of the logistic and exponential losses.

    Paper: "Discovering Preference Optimization Algorithms with and for Large Language Models",
    https://arxiv.org/abs/2406.08414, Eq. 5: with ``rho = beta d`` and ``w = sigmoid(rho / tau)``,
    ``l = (1 - w) (-log sigmoid(rho)) + w exp(-rho)``. TRL: ``loss_type="discopop"`` with
    ``discopop_tau``. Defaults ``beta = 0.05`` (Sec. B.1), ``tau = 0.05`` (Sec. E), as quoted by
    TRL's paper index. Deviation (numerics only): ``w exp(-rho)`` is computed as
    ``exp(log sigmoid(rho/tau) - rho)``, equal in value and gradient but without ``0 * inf`` for
    very negative ``rho``.
    """

    beta: float = 0.05
    tau: float = 0.05
    """Temperature of the modulation sigmoid."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"DiscoPOP.tau must be a positive finite number, got {self.tau}")


@PREFERENCE_LOSSES.register("discopop", config=DiscoPOP)
def discopop(out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: DiscoPOP) -> LossOutput:
    """DiscoPOP: ``(1/P) sum_i (1 - w_i)(-log sig(rho_i)) + w_i exp(-rho_i)``.

    Args: as :func:`dpo`. Returns: 0-d loss and ``pref/*`` metrics.
    """
    p = pair_inputs(out_chosen, out_rejected, batch)
    rho = cfg.beta * p.margin
    w = torch.sigmoid(rho / cfg.tau)
    per_pair = (1.0 - w) * -F.logsigmoid(rho) + torch.exp(F.logsigmoid(rho / cfg.tau) - rho)
    return _pairwise(per_pair, p, batch, cfg.beta)


# ---------------------------------------------------------------------------------------------
# Combinator
# ---------------------------------------------------------------------------------------------


def _mpo_terms() -> tuple[tuple[PartConfig, float], ...]:
    return ((DPO(beta=0.1), 0.8), (BCOPair(beta=0.1), 0.2), (ChosenNLL(), 1.0))


@dataclass(frozen=True)
class WeightedPreference(PartConfig):
    """A weighted sum of preference losses, as TRL's ``loss_type=[...]`` with ``loss_weights=[...]``.

    ``L = sum_k w_k L_k`` where each ``L_k`` is a registered preference loss with its own config
    (so each term keeps its own ``beta``, unlike TRL's shared one). The default is MPO, "Enhancing
    the Reasoning Ability of Multimodal Large Language Models via Mixed Preference Optimization",
    https://arxiv.org/abs/2411.10442, Sec. 3.2: ``0.8 dpo + 0.2 bco_pair + 1.0 sft`` (weights from
    Sec. 7 and TRL's shared ``beta = 0.1``, as quoted by TRL's paper index). RPO is
    ``((DPO(beta=0.01), 1.0), (ChosenNLL(), 0.005))``. Metrics: ``pref/loss`` (the sum), each
    term's loss as ``pref/loss_<name>`` (unweighted; ``_<k>`` appended to a repeated name) and
    the ``pref/*`` reward metrics of the first term that has them.
    """

    terms: tuple[tuple[PartConfig, float], ...] = _mpo_terms()
    """(config of a registered preference loss, weight) pairs."""

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("WeightedPreference.terms is empty: give (config, weight) pairs")
        for k, term in enumerate(self.terms):
            if len(term) != 2:
                raise ValueError(f"WeightedPreference.terms[{k}] must be a (config, weight) pair, got {term!r}")
            cfg, w = term
            if not isinstance(cfg, PartConfig):
                raise ValueError(f"WeightedPreference.terms[{k}][0] must be a preference loss config, got {cfg!r}")
            if not (isinstance(w, int | float) and math.isfinite(w)):
                raise ValueError(f"WeightedPreference.terms[{k}][1] must be a finite number, got {w!r}")

    @property
    def needs_ref_logprobs(self) -> bool:
        return any(cfg.needs_ref_logprobs for cfg, _ in self.terms)

    @property
    def needs_revision_logprobs(self) -> bool:
        return any(getattr(cfg, "needs_revision_logprobs", False) for cfg, _ in self.terms)

    @property
    def revision_template(self) -> str | None:
        """The revision prompt of the first term that needs one (the loop builds one set per pair)."""
        return next((c.revision_template for c, _ in self.terms if getattr(c, "needs_revision_logprobs", False)), None)


@PREFERENCE_LOSSES.register("weighted", config=WeightedPreference)
def weighted(
    out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: WeightedPreference
) -> LossOutput:
    """Weighted sum ``sum_k w_k L_k`` of registered preference losses.

    Args: as :func:`dpo`; each term's needs apply. Returns: 0-d loss and the metrics of the class.
    """
    loss: Any = 0.0
    metrics: dict[str, float] = {}
    reductions: dict[str, MetricReduction] = {}
    seen: set[str] = set()
    for k, (term, w) in enumerate(cfg.terms):
        name = PREFERENCE_LOSSES.name_of(term)
        out = PREFERENCE_LOSSES.fn_for(term)(out_chosen, out_rejected, batch, term)
        loss = loss + w * out.loss
        key = f"pref/loss_{name}" if name not in seen else f"pref/loss_{name}_{k}"
        seen.add(name)
        metrics[key], reductions[key] = out.metrics["pref/loss"], "sum"
        for m, v in out.metrics.items():
            if m != "pref/loss" and m not in metrics:
                metrics[m], reductions[m] = v, out.reduction(m)
    metrics["pref/loss"], reductions["pref/loss"] = float(loss.detach()), "sum"
    return LossOutput(loss=loss, metrics=metrics, reductions=reductions)
