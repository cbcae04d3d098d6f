"""AEPO's entropy controller: REINFORCE samples drawn at an adjusted temperature, spliced into the batch
(rollout part ``aepo_controller``; the advantage is ``anypo.advantages.aepo``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from anypo.ops import group_stats, masked_mean
from anypo.rollout.groups import Request
from anypo.rollout.guidance import splice
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.types import PartConfig, RolloutBatch

__all__ = ["AEPO_GROUP_REWARDS", "AEPO_REINFORCE", "AEPOController", "AEPOControllerConfig", "controller_rows"]

AEPO_REINFORCE = "aepo_reinforce"
"""``extras`` key, per row: True for a controller sample (its advantage is 1 on every token)."""
AEPO_GROUP_REWARDS = "aepo_group_rewards"
"""``extras`` key, per row: the rewards of the row's whole on-policy group before the splice (a tuple) for
the kept rows of a group that lost rows to it, else None (the advantage then uses the batch's group)."""


@dataclass(frozen=True)
class AEPOControllerConfig(PartConfig):
    """AEPO's entropy controller: extra samples at temperature ``T`` for a quarter of the prompts; their
    positive-advantage samples replace the first rows of the batch and are trained with advantage 1.

    Paper: "Arbitrary Entropy Policy Optimization: Entropy Is Controllable in Reinforcement
    Fine-tuning", https://arxiv.org/abs/2510.08141 (the README's ``grad J_AEPO = grad J_GRPO + alpha
    E_{o ~ pi^T}[grad log pi(o|q) R(q, o)]`` with ``T = T_high if H(pi_old) < H else T_low``). Verified
    against the official code, github.com/597358816/AEPO (commit b353a05) ``verl/trainer/ray_trainer.py::fit``
    branch ``alg == "AEPO"`` and ``_select_by_advantage``; ``verl/trainer/config.py``;
    ``examples/qwen-math-7b-AEPO.sh``. Per step, with ``B`` the batch's prompts in order:

        T    = temperature_high (1.2) if H_prev <= H0 else temperature_low (0.8)
        C    = the first floor(B * controller_fraction) prompts (the code: len // 4), each sampled n times at T
        A^C  = GRPO advantages within C's groups ((R - mean) / (std_unbiased + 1e-6))
        S    = the samples of C with A^C > positive_threshold (0.05), in row order
        k    = min(reinforce_sample_num (60), |S|);   k = k // 2 if H_prev > H0
        batch' = S[:k] followed by rows k.. of the on-policy batch (the size is unchanged)
        A    = 1 on every token of S[:k]; the other rows keep the GRPO advantage of their whole
               on-policy group (computed before the splice)
        H_prev <- mean over batch' tokens of -log pi_old(o_t)   (the sampled-token NLL, for the next step)

    The policy loss is the usual PPO clip on ``batch'`` with the behaviour log-probs at the training
    temperature (the controller rows were sampled from ``pi^T`` and are scored at T = 1: off-policy by
    temperature, no correction, as the code).

    **Deviations.** ``H_prev`` is the sampled-token NLL of ``batch'`` under the behaviour policy,
    measured here when the batch is built (the code: the update's ``actor/entropy_loss``, the mean over
    micro-batches of the same NLL under the weights being updated; equal at one on-policy update up to
    micro-batch weighting). The controller rows' behaviour log-probs at the training temperature are
    recomputed here with the policy (``groups.engine.model``; only those ``k`` rows), the engine's being
    at ``T``. No controller sample with a positive advantage: nothing is replaced (the code crashes,
    ``len(None)``); ``k`` never exceeds the batch. The spliced rows keep the group id of the row they
    replace (``extras["guided"]`` = True: per-prompt statistics leave them out) and carry their own
    prompt.

    State (``state_dict``, in checkpoints): ``h_prev`` (0 at the start, as the code) and the last
    step's ``temperature``. Metrics: ``rollout/aepo_temperature``, ``rollout/aepo_h_prev``,
    ``rollout/aepo_controller_samples``, ``rollout/aepo_positive``, ``rollout/aepo_replaced``,
    ``rollout/aepo_controller_reward``, ``rollout/aepo_controller_tokens``.
    """

    entropy_base: float = 0.5
    """H0, the target of the entropy statistic (trainer.entropy_base; the README's best run: 0.75)."""
    temperature_high: float = 1.2
    """T while H_prev <= H0 (raises the entropy)."""
    temperature_low: float = 0.8
    """T while H_prev > H0 (lowers it)."""
    reinforce_sample_num: int = 60
    """Most controller samples spliced in per step (the script: "as small as possible when entropy is controllable")."""
    controller_fraction: float = 0.25
    """Share of the step's prompts (the first ones) that get controller samples (the code: a quarter)."""
    positive_threshold: float = 0.05
    """A controller sample is kept when its GRPO advantage exceeds this."""
    eps: float = 1e-6
    """Added to the group std of the controller's GRPO advantage."""

    def __post_init__(self) -> None:
        if not (self.temperature_high > 0 and self.temperature_low > 0):
            raise ValueError(
                f"AEPOControllerConfig temperatures must be > 0, got temperature_high={self.temperature_high}, "
                f"temperature_low={self.temperature_low}"
            )
        if self.reinforce_sample_num < 0:
            raise ValueError(f"AEPOControllerConfig.reinforce_sample_num must be >= 0, got {self.reinforce_sample_num}")
        if not 0.0 <= self.controller_fraction <= 1.0:
            raise ValueError(
                f"AEPOControllerConfig.controller_fraction must be in [0, 1], got {self.controller_fraction}"
            )
        if self.eps < 0:
            raise ValueError(f"AEPOControllerConfig.eps must be >= 0, got {self.eps}")

    def temperature(self, h_prev: float) -> float:
        """``temperature_high`` if ``h_prev <= entropy_base`` else ``temperature_low``."""
        return self.temperature_high if h_prev <= self.entropy_base else self.temperature_low


def controller_rows(cfg: AEPOControllerConfig, ctrl: RolloutBatch, h_prev: float) -> list[int]:
    """The rows of the controller batch ``ctrl`` that replace the first rows of the step's batch, in order:
    ``S[:k]`` with ``S`` the rows of GRPO advantage > threshold and ``k`` as in :class:`AEPOControllerConfig`."""
    mean, std, _ = group_stats(ctrl.rewards.double(), ctrl.group_ids)
    adv = (ctrl.rewards.double() - mean) / (std + cfg.eps)
    positive = [i for i, a in enumerate(adv.tolist()) if a > cfg.positive_threshold]
    k = min(cfg.reinforce_sample_num, len(positive))
    if h_prev > cfg.entropy_base:
        k //= 2
    return positive[:k]


@ROLLOUTS.register("aepo_controller", config=AEPOControllerConfig)
class AEPOController(RolloutPart):
    """Plain groups plus AEPO's temperature-``T`` controller samples (see :class:`AEPOControllerConfig`)."""

    cfg: AEPOControllerConfig

    def __init__(self, cfg: AEPOControllerConfig, groups):
        super().__init__(cfg, groups)
        self.h_prev, self.last_temperature = 0.0, cfg.temperature(0.0)

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        cfg, g = self.cfg, self.groups
        batch = g.collect(requests, seed, group_offset)
        T = cfg.temperature(self.h_prev)
        self.last_temperature = T
        n_ctrl = int(math.floor(len(requests) * cfg.controller_fraction + 1e-9))
        chosen: list[int] = []
        ctrl = None
        if n_ctrl > 0 and batch.num_seqs:
            start = g.generated_tokens
            ctrl = g.collect(list(requests[:n_ctrl]), seed + 104_729, 0, temperature=T)
            self.add("aepo_controller_tokens", g.generated_tokens - start)
            self.add("aepo_controller_samples", ctrl.num_seqs)
            self.add("aepo_controller_reward", float(ctrl.rewards.double().mean()))
            chosen = controller_rows(cfg, ctrl, self.h_prev)
            mean, std, _ = group_stats(ctrl.rewards.double(), ctrl.group_ids)
            self.add(
                "aepo_positive", int(((ctrl.rewards.double() - mean) / (std + cfg.eps) > cfg.positive_threshold).sum())
            )
        k = min(len(chosen), batch.num_seqs)
        flags = [False] * batch.num_seqs
        full: list[Any] = [None] * batch.num_seqs
        if k and ctrl is not None:
            gids, errs = batch.group_ids.tolist(), batch.extras.get("reward_error") or [False] * batch.num_seqs
            rewards = batch.rewards.tolist()
            lost = {gids[r] for r in range(k)}
            for r in range(k, batch.num_seqs):
                if gids[r] in lost:  # a kept row of a group that lost rows: its whole group's rewards
                    full[r] = tuple(x for x, gg, e in zip(rewards, gids, errs, strict=True) if gg == gids[r] and not e)
            batch = splice(batch, list(range(k)), ctrl, chosen[:k], g.tokenizer.pad_token_id)
            flags[:k] = [True] * k
            batch.extras["guided"] = [True] * k + list(batch.extras["guided"][k:])
            self._rescore_behaviour(batch, k)
        batch.extras[AEPO_REINFORCE] = flags
        batch.extras[AEPO_GROUP_REWARDS] = full
        self.add("aepo_replaced", k)
        self.metrics["rollout/aepo_temperature"] = T
        self.metrics["rollout/aepo_h_prev"] = self.h_prev
        if bool((batch.response_mask != 0).any()):
            self.h_prev = float(-masked_mean(batch.old_logprobs.double(), batch.response_mask))
        return batch

    def _rescore_behaviour(self, batch: RolloutBatch, k: int) -> None:
        """The behaviour log-probs of the first ``k`` rows (sampled at ``T``) at the training temperature."""
        from anypo.policy import batched_logprobs

        model = getattr(self.groups.engine, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(
                "aepo_controller recomputes its controller rows' log-probs with the policy: the engine must expose "
                "the policy module as engine.model (the hf and vllm engines do)"
            )
        sub = batch.select(torch.arange(k))
        lp = batched_logprobs(model, sub, self.groups.sampling.temperature, micro=8)
        batch.old_logprobs[:k, : lp.shape[1]] = lp.to(batch.old_logprobs.dtype) * sub.response_mask
        batch.old_logprobs[:k, lp.shape[1] :] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"h_prev": self.h_prev, "temperature": self.last_temperature}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h_prev = float(state.get("h_prev", 0.0))
        self.last_temperature = float(state.get("temperature", self.cfg.temperature(self.h_prev)))
