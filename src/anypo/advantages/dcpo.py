"""DCPO's advantage: the GRPO advantage mixed with a temperature-importance-weighted REINFORCE term.

Notation: ``R_i`` the sequence reward, ``A_i`` its GRPO advantage, ``b_i = 1[R_i > 0.05]`` success,
``lp1_it`` / ``lpT_it`` the behaviour policy's log-probs of the sampled token at temperature 1 and at
the target temperature ``T``, ``H_prev`` the previous step's entropy statistic (part state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, GRPOAdvantage, grpo, sequence_rewards
from anypo.ops import masked_mean, zero_masked
from anypo.types import RolloutBatch

__all__ = ["DCPOAdvantage", "dcpo", "tempered_key"]


def tempered_key(temperature: float) -> str:
    """Key of ``RolloutBatch.extras`` holding the behaviour policy's [N, T] log-probs of the sampled
    tokens at ``temperature`` (``log_softmax(z / temperature)[o]`` with ``z`` the raw logits), e.g.
    ``old_logprobs_at_T1.2``."""
    return f"old_logprobs_at_T{temperature:g}"


@dataclass(frozen=True)
class DCPOAdvantage(GroupRelativeConfig):
    """DCPO: the GRPO advantage mixed with a REINFORCE term whose weight is the importance ratio of a
    virtual target distribution (the behaviour policy at temperature ``T``) to the behaviour policy.

    Paper: "Distribution-Centric Policy Optimization Dominates the Exploration-Exploitation Trade-off",
    https://arxiv.org/abs/2601.12730 (the README gives the ratios ``r`` and ``rho``; the paper's
    equations could not be read). Verified against the official code, github.com/597358816/DCPO:
    ``verl/trainer/ray_trainer.py::fit`` (branch ``alg == "DCPO"``), ``_compute_bool_reward_by_score``,
    ``_compute_old_log_probs(temperature=...)``, ``verl/workers/actor/dp_actor.py`` (``entropy_loss``,
    ``logits.div_(temperature)``), ``examples/qwen-math-7b-DCPO.sh`` and ``examples/config.yaml``:

        T        = temperature_high (1.2) if H_prev <= H0 else temperature_low (0.8)
        A_i      = (R_i - mean_g R) / (std_g R + 1e-6)                    (GRPO, unbiased std)
        b_i      = 1[R_i > 0.05]                                          (raw score, before any KL)
        p        = mean_i b_i over the whole batch
        a        = min(|H0 - H_prev|, 0.1) / p;   alpha = a / (a + 1)
        rho_it   = exp(lpT_it - lp1_it)                                   (no gradient)
        A'_it    = (1 - alpha) A_i + alpha b_i rho_it
        H_prev  <- -token-mean(lp1) of this batch                         (for the next step)

    The policy loss then takes ``A'`` as usual (the code: PPO clip 0.2 / 0.2, dual clip 3, token mean,
    no KL), so the added term is a REINFORCE push ``alpha b rho grad lp`` on successful samples, weighted
    toward the temperature-``T`` distribution: ``T = 1.2`` raises the entropy while it is at or below
    ``H0``, ``T = 0.8`` lowers it above. ``H_prev`` starts at 0.

    State (``stateful``, in checkpoints): ``{"h_prev": H_prev}``, plus the last step's ``temperature``
    and ``alpha`` for inspection. The function updates it in place once a step (an advantage part is
    called once per step).

    **Inputs from the loop** (``needs_old_tempered_logprobs``): for every temperature in
    ``old_logprob_temperatures(state)`` (``(T, 1.0)``), ``batch.extras[tempered_key(t)]`` [N, T]: the
    behaviour policy's log-probs of the sampled tokens with its raw logits divided by ``t``, computed
    before the advantage part is called, from the same no-grad forward as the old log-probs (one extra
    log-softmax per temperature and position, chunked; two [N, T] tensors kept). On-policy with the
    engine's log-probs this is one no-grad forward per step.

    Deviations: ``H_prev`` is the sampled-token NLL at T = 1 of the batch under the behaviour policy,
    measured when the advantages are computed (the code: the mean over the micro-batches of the step's
    policy update of the same NLL under the weights being updated; equal at one on-policy update, up
    to micro-batch weighting); when no sample succeeds (``p = 0``) the mix is skipped (``A' = A``;
    the code divides by zero). ``rho``'s log-ratio is clamped to [-20, 20] before ``exp``.

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``, the two extras [N, T'] with
    ``T' >= T`` -> ``[N, T]``.
    """

    entropy_base: float = 0.5
    """H0: the target of the entropy statistic (trainer.entropy_base; the README's ablation favours 0.25)."""
    temperature_high: float = 1.2
    """T while H_prev <= H0 (raises the entropy)."""
    temperature_low: float = 0.8
    """T while H_prev > H0 (lowers the entropy)."""
    alpha_cap: float = 0.1
    """Cap on |H0 - H_prev| before dividing by the success rate."""
    success_threshold: float = 0.05
    """b_i = 1[R_i > threshold] (the code's bool_reward on the raw score)."""
    eps: float = 1e-6
    """Added to the group std of the GRPO advantage."""

    def __post_init__(self) -> None:
        if self.temperature_high <= 0 or self.temperature_low <= 0:
            raise ValueError(
                f"DCPOAdvantage temperatures must be > 0, got temperature_high={self.temperature_high}, "
                f"temperature_low={self.temperature_low}"
            )
        if self.alpha_cap < 0:
            raise ValueError(f"DCPOAdvantage.alpha_cap must be >= 0, got {self.alpha_cap}")
        if self.eps < 0:
            raise ValueError(f"DCPOAdvantage.eps must be >= 0, got {self.eps}")

    @property
    def needs_old_tempered_logprobs(self) -> bool:
        """The loop must fill extras[tempered_key(t)] for t in old_logprob_temperatures(state)."""
        return True

    @property
    def stateful(self) -> bool:
        """H_prev is carried from one step to the next."""
        return True

    def init_state(self) -> dict[str, Any]:
        return {"h_prev": 0.0}

    def temperature(self, state: dict[str, Any] | None) -> float:
        """The target temperature this step: ``temperature_high`` if ``H_prev <= H0`` else ``temperature_low``."""
        h = float(state.get("h_prev", 0.0)) if state else 0.0
        return self.temperature_high if h <= self.entropy_base else self.temperature_low

    def old_logprob_temperatures(self, state: dict[str, Any] | None) -> tuple[float, ...]:
        """Temperatures at which the loop must compute the behaviour policy's log-probs this step."""
        return (self.temperature(state), 1.0)


def _tempered(batch: RolloutBatch, temperature: float, like: Tensor) -> Tensor:
    key = tempered_key(temperature)
    x = batch.extras.get(key)
    if x is None:
        raise ValueError(
            f"dcpo needs batch.extras[{key!r}] [N, T] (the behaviour policy's log-probs of the sampled tokens at "
            f"temperature {temperature:g}; needs_old_tempered_logprobs): the loop must compute them for every "
            "temperature in DCPOAdvantage.old_logprob_temperatures(state) before the advantages"
        )
    x = torch.as_tensor(x)
    if x.shape[0] != like.shape[0] or x.shape[1] < like.shape[1]:
        raise ValueError(f"dcpo: extras[{key!r}] has shape {tuple(x.shape)}, the batch {tuple(like.shape)}")
    return x[:, : like.shape[1]].to(device=like.device, dtype=like.dtype)


@ADVANTAGES.register("dcpo", config=DCPOAdvantage)
def dcpo(batch: RolloutBatch, cfg: DCPOAdvantage) -> Tensor:
    """DCPO advantage ``A' = (1 - alpha) A + alpha b rho`` (see :class:`DCPOAdvantage`).

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``,
            ``extras[tempered_key(T)]`` and ``extras[tempered_key(1.0)]``; ``part_state`` (``h_prev``;
            None: 0, and nothing is recorded).
        cfg: H0, temperatures, cap, success threshold, eps.

    Returns:
        [N, T] advantages in the dtype of ``rewards``, 0 off the mask. Records with
        ``batch.add_metric`` (the loop's ``advantage/*``): ``alpha``, ``temperature`` (the target
        T), ``h_prev`` (the entropy statistic that chose them) and ``success_frac`` (p).
    """
    state = batch.part_state
    mask = batch.mask
    A = grpo(batch, GRPOAdvantage(scale="group", eps=cfg.eps))  # [N, T], A_i on the mask
    T = cfg.temperature(state)
    lp1 = zero_masked(_tempered(batch, 1.0, mask), mask)  # [N, T]
    lpT = zero_masked(_tempered(batch, T, mask), mask)
    b = (sequence_rewards(batch) > cfg.success_threshold).to(A.dtype)  # [N]
    p = float(b.mean()) if b.numel() else 0.0
    h_prev = float(state.get("h_prev", 0.0)) if state else 0.0
    alpha = 0.0
    if p > 0:
        a = min(abs(cfg.entropy_base - h_prev), cfg.alpha_cap) / p
        alpha = a / (a + 1.0)
    rho = (lpT - lp1).clamp(-20.0, 20.0).exp()  # [N, T], no gradient (inputs are data)
    out = ((1.0 - alpha) * A + alpha * b[:, None] * rho) * mask
    for key, value in (("alpha", alpha), ("temperature", T), ("h_prev", h_prev), ("success_frac", p)):
        batch.add_metric(key, value)  # advantage/alpha, advantage/temperature, ...
    if state is not None:
        state["h_prev"] = float(-masked_mean(lp1, mask)) if bool((mask != 0).any()) else h_prev
        state["temperature"] = T
        state["alpha"] = alpha
    return out
