"""SAFE's entropy-aware predictive KL controller (with its entropy bonus), as a regularizer with state."""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from anypo.ops import AGGREGATIONS, Aggregation, aggregate, kl_estimate, zero_masked
from anypo.regularizers.basic import REGULARIZERS
from anypo.types import LossOutput, PartConfig, PolicyOutput, RolloutBatch

__all__ = ["SAFEControl", "safe", "safe_controller_step", "safe_phase_multiplier", "safe_pid", "safe_threshold"]

KL_KEY, ENT_KEY, REWARD_KEY = "safe/kl", "safe/entropy", "safe/reward_mean"
"""Metrics of one update that ``update_state`` feeds the controller (combined over micro-batches)."""


def safe_pid(state: dict[str, Any], reward: float, kp: float, ki: float, kd: float) -> float:
    """SAFE's ``PIDController.update`` on the reward velocity, in place: the first call sets the EMA
    and returns 0; then ``ema <- 0.95 ema + 0.05 r``, ``e = (ema - ema_prev) - 0.001``,
    ``I <- clip(I + e, -1, 1)``, ``u = kp e + ki I + kd (e - e_prev)``."""
    if state.get("reward_ema") is None:
        state["reward_ema"] = reward
        return 0.0
    old = state["reward_ema"]
    state["reward_ema"] = 0.95 * old + 0.05 * reward
    err = (state["reward_ema"] - old) - 0.001
    state["integral"] = max(-1.0, min(1.0, state["integral"] + err))
    d = err - state["prev_error"]
    state["prev_error"] = err
    return kp * err + ki * state["integral"] + kd * d


def safe_phase_multiplier(history: list[float]) -> float:
    """SAFE's ``PhaseDetector``: WARMUP (< 50 rewards) 1.5; CLIMBING (mean of the last 50 > mean of the
    50 before + 0.01) 1.2; CONVERGED (their population std < 0.02 and mean > 0.7) 1.0; else PLATEAU 0.8."""
    if len(history) < 50:
        return 1.5
    recent = history[-50:]
    old = history[-100:-50] if len(history) >= 100 else recent
    if sum(recent) / len(recent) > sum(old) / len(old) + 0.01:
        return 1.2
    if statistics.pstdev(recent) < 0.02 and sum(recent) / len(recent) > 0.7:
        return 1.0
    return 0.8


def safe_threshold(state: dict[str, Any], reward: float, cfg: SAFEControl) -> float:
    """Advance the PID and phase history with ``reward`` (in place) and return the KL threshold
    ``clip((base + PID) * phase, 0.1, 0.6)``."""
    state["history"].append(reward)
    u = safe_pid(state, reward, cfg.kp, cfg.ki, cfg.kd)
    return max(0.1, min(0.6, (cfg.base_threshold + u) * safe_phase_multiplier(state["history"])))


def safe_controller_step(state: dict[str, Any], kl: float, entropy: float, reward: float, cfg: SAFEControl) -> float:
    """SAFE's ``EntropyAwarePredictiveController.compute_penalty`` in place; returns the penalty.

    ``kl_short <- 0.9 kl_short + 0.1 kl``, ``kl_long <- 0.99 kl_long + 0.01 kl``; threshold as
    :func:`safe_threshold`; penalty ``0.1 (kl_short - thr)^2 max(0.5, floor / (H + 0.1))`` when
    ``kl_short > thr``, else 0.
    """
    state["kl_short"] = 0.9 * state["kl_short"] + 0.1 * kl
    state["kl_long"] = 0.99 * state["kl_long"] + 0.01 * kl
    thr = safe_threshold(state, reward, cfg)
    factor = max(0.5, cfg.entropy_floor / (entropy + 0.1))
    penalty = 0.1 * (state["kl_short"] - thr) ** 2 * factor if state["kl_short"] > thr else 0.0
    state.update(threshold=thr, penalty=penalty, entropy_factor=factor if penalty else 1.0)
    return penalty


@dataclass(frozen=True)
class SAFEControl(PartConfig):
    """SAFE's entropy-aware predictive KL control and entropy bonus, added to the policy loss.

    Paper: D. Maity, "SAFE: Stable Alignment Finetuning with Entropy-Aware Predictive Control for
    RLHF", https://arxiv.org/abs/2602.04651 (``L_EPC = g_t L_base``, ``tau_t = (tau_base + PID(r_t))
    phi_t``); verified against the official code (github.com/ryyzn9/SAFE ``notebooks/mainD.py``:
    ``PIDController``, ``PhaseDetector``, ``EntropyAwarePredictiveController``, ``train_step``). Per
    optimizer step, with ``KL`` the token-mean k1 estimate of KL(pi || pi_ref) at the current weights,
    ``H`` the mean entropy and ``r`` the mean raw reward of the mini-batch:

        kl_short <- 0.9 kl_short + 0.1 KL          kl_long <- 0.99 kl_long + 0.01 KL
        thr       = clip((base + PID(r)) * phase(r history), 0.1, 0.6)
        penalty   = 0.1 (kl_short - thr)^2 * max(0.5, H_floor / (H + 0.1))   if kl_short > thr, else 0
        loss      = [penalty] - c_H * agg(H)

    PID on the reward velocity (EMA 0.95, target 0.001, anti-windup +-1, kp 0.3, ki 0.01, kd 0.05);
    phases WARMUP (< 50 updates) 1.5, CLIMBING 1.2, CONVERGED 1.0, PLATEAU 0.8; base 0.3, H_floor 2.

    ``penalty="code"`` (default, the official code): the penalty is computed from ``kl.item()``, a
    Python float, so it changes the loss value only and **its gradient is 0**; the controller is then a
    monitor and the training signal beyond the policy loss is the entropy bonus. Such a penalty is left
    out of the loss here (its value is logged as ``safe/penalty``), so micro-batch losses still sum.
    ``penalty="grad"`` (anypo's reading of the paper's ``L_EPC`` as a loss term, UNVERIFIED): the
    penalty uses ``kl_short = 0.9 kl_short_prev + 0.1 KL(theta)`` with the current KL's gradient, and
    the part runs each mini-batch as one micro-batch (``needs_whole_minibatch``; the penalty is not a
    sum over sequences).

    State (``stateful``, in checkpoints): ``kl_short``, ``kl_long``, the PID's EMA / integral / previous
    error, the reward history, the last threshold and penalty. ``update_state`` advances it once per
    optimizer step with that step's logged ``safe/kl``, ``safe/entropy`` and ``safe/reward_mean``
    (the code advances it once per PPO epoch, each epoch being one step there).

    Deviations: ``H`` is the entropy of the current forward, aggregated as the bonus (the code: the
    rollout's per-sequence token-mean entropy, the same weights at the first epoch), and enters the
    penalty's factor detached (a gate, as the code's constant); the bonus's
    ``agg`` is over response tokens (the code: ``.mean()`` over every position of the padded batch);
    the code's ``max_preview_kl`` step scaling is defined but never called and is not built.

    Shapes: ``logprobs``, ``entropy``, ``ref_logprobs``, ``response_mask`` [N, T]; ``rewards`` [N].
    """

    entropy_coef: float = 0.01
    """c_H: weight of the entropy bonus (the code's entropy_coef)."""
    base_threshold: float = 0.3
    """tau_base: the KL threshold before the PID and phase adjustments (kl_base_threshold)."""
    entropy_floor: float = 2.0
    """H_floor: below it the penalty is amplified by H_floor / (H + 0.1)."""
    kp: float = 0.3
    """PID proportional gain."""
    ki: float = 0.01
    """PID integral gain."""
    kd: float = 0.05
    """PID derivative gain."""
    penalty: Literal["code", "grad"] = "code"
    """code: the official constant penalty (no gradient); grad: a differentiable penalty (UNVERIFIED)."""
    aggregation: Aggregation = "token_mean"
    """Aggregation of the KL estimate and of the entropy bonus over response tokens."""
    norm_length: float | None = None
    """Constant length of seq_mean_token_sum_norm; None: the mini-batch's."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"SAFEControl.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if self.penalty not in ("code", "grad"):
            raise ValueError(f"SAFEControl.penalty must be 'code' or 'grad', got {self.penalty!r}")
        if not self.entropy_floor >= 0 or not self.base_threshold >= 0:
            raise ValueError(
                f"SAFEControl.entropy_floor and base_threshold must be >= 0, got {self.entropy_floor}, {self.base_threshold}"
            )

    @property
    def needs_ref_logprobs(self) -> bool:
        return True

    @property
    def needs_entropy(self) -> bool:
        return True

    @property
    def needs_whole_minibatch(self) -> bool:
        """The differentiable penalty is a function of the whole mini-batch's KL, not a sum over it."""
        return self.penalty == "grad"

    @property
    def stateful(self) -> bool:
        return True

    def init_state(self) -> dict[str, Any]:
        return {
            "kl_short": 0.0,
            "kl_long": 0.0,
            "reward_ema": None,
            "integral": 0.0,
            "prev_error": 0.0,
            "history": [],
            "threshold": self.base_threshold,
            "penalty": 0.0,
            "entropy_factor": 1.0,
        }

    def update_state(self, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """One controller step on this optimizer step's KL, entropy and mean reward."""
        if KL_KEY in metrics:
            safe_controller_step(state, metrics[KL_KEY], metrics[ENT_KEY], metrics[REWARD_KEY], self)


@REGULARIZERS.register("safe", config=SAFEControl)
def safe(out: PolicyOutput, batch: RolloutBatch, cfg: SAFEControl) -> LossOutput:
    """SAFE: ``-c_H agg(H)`` plus, with ``penalty="grad"``, the controller's differentiable penalty.

    Args:
        out: ``logprobs`` and ``entropy`` [N, T] (with grad).
        batch: ``ref_logprobs``, ``response_mask`` [N, T], ``rewards`` [N]; ``part_state`` (the
            controller; None: a fresh one).
        cfg: gains, thresholds, penalty form, aggregation.

    Returns:
        0-d loss and ``safe/kl`` (agg of k1 = lp - ref), ``safe/entropy`` (agg H), ``safe/reward_mean``
        (mean raw reward; these three sum over micro-batches and feed ``update_state``),
        ``policy/entropy``, and the controller's state before this update: ``safe/threshold``,
        ``safe/kl_short``, ``safe/penalty`` (the last step's), ``safe/entropy_factor``.
    """
    if out.entropy is None:
        raise ValueError("PolicyOutput.entropy is None, but the safe regularizer needs it (needs_entropy)")
    lp = out.logprobs
    mask = batch.response_mask.to(lp.dtype)
    scale = batch.scale()
    ref = zero_masked(batch.require("ref_logprobs", "SAFE's KL control needs the reference model").to(lp.dtype), mask)
    kl = aggregate(kl_estimate(zero_masked(lp, mask), ref, "k1"), mask, cfg.aggregation, scale, cfg.norm_length)
    H = aggregate(zero_masked(out.entropy, mask), mask, cfg.aggregation, scale, cfg.norm_length)
    reward = batch.rewards.to(lp.dtype).sum() / max(scale.num_seqs, 1e-8)
    state = batch.part_state if batch.part_state is not None else cfg.init_state()
    loss = -cfg.entropy_coef * H
    metrics = {
        KL_KEY: float(kl.detach()),
        ENT_KEY: float(H.detach()),
        REWARD_KEY: float(reward),
        "policy/entropy": float(H.detach()),
        "safe/threshold": float(state["threshold"]),
        "safe/kl_short": float(state["kl_short"]),
        "safe/penalty": float(state["penalty"]),
        "safe/entropy_factor": float(state["entropy_factor"]),
    }
    if cfg.penalty == "grad":  # this call holds the whole mini-batch (needs_whole_minibatch)
        preview = copy.deepcopy(state)  # the threshold update_state will compute for this step
        thr = safe_threshold(preview, float(reward), cfg)
        kl_short = 0.9 * float(state["kl_short"]) + 0.1 * kl
        factor = max(0.5, cfg.entropy_floor / (float(H.detach()) + 0.1))
        if float(kl_short.detach()) > thr:
            loss = loss + 0.1 * (kl_short - thr).square() * factor
    reductions = {KL_KEY: "sum", ENT_KEY: "sum", REWARD_KEY: "sum", "policy/entropy": "sum"}
    reductions |= {k: "max" for k in ("safe/threshold", "safe/kl_short", "safe/penalty", "safe/entropy_factor")}
    return LossOutput(loss=loss, metrics=metrics, reductions=reductions)
