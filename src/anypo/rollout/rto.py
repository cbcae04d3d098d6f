"""RTO's dense token reward: the DPO policy's clipped per-token log-ratio, added to every group.

Paper: "DPO Meets PPO: Reinforced Token Optimization for RLHF", https://arxiv.org/abs/2404.18922
(RTO). Stage 1 trains a DPO policy ``pi_dpo`` (e.g. ``anypo train dpo``); stage 2 runs PPO from the
SFT policy with a token-level reward. Verified against the authors' code (zkshan2002/RTO at
f2c12948, an OpenRLHF fork: ``experience_maker.py::_compute_dpo_rewards`` and
``models/utils.py::compute_reward``; spec ``preference-selfplay-agentic.md`` section 7):

    r_k = clip(beta1 (log pi_dpo(a_k|s_k) - log pi_ref(a_k|s_k)), -c, +c)      this part: batch.token_rewards
          - beta2 (log pi_theta(a_k|s_k) - log pi_ref(a_k|s_k))                 GAE's kl_coef (the k1 penalty)
          + 1[k = last token] r(x, y)                                           the task reward (GAE's outcome term)

then GAE with a critic and PPO-clip (the ``rto`` preset). ``pi_ref`` is the SFT (initial) policy.
The part computes both log-probs itself at temperature 1 with two frozen models: ``pi_dpo`` loaded
from ``dpo_model`` (a Hugging Face directory, e.g. the ``final/`` of a dpo run) and ``pi_ref`` a copy
of the policy's weights when the part is built (before any update: the initial policy), or loaded
from ``ref_model``.

``dpo_model=""`` (the smoke default) uses the initial policy as ``pi_dpo``: the DPO token reward is 0
everywhere (stage 1 skipped) and the method reduces to PPO with the KL penalty; a warning says so.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from anypo.rollout.groups import GroupRollout, Request
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.types import PartConfig, RolloutBatch

__all__ = ["RTOTokenReward", "RTOTokenRewardConfig", "rto_token_rewards"]

log = logging.getLogger(__name__)


def rto_token_rewards(lp_dpo: Tensor, lp_ref: Tensor, mask: Tensor, beta1: float, clip: float) -> Tensor:
    """``clip(beta1 (lp_dpo - lp_ref), -clip, clip)`` on the response tokens, 0 elsewhere; ``[N, T]``."""
    r = (beta1 * (lp_dpo - lp_ref)).clamp(-clip, clip)
    return torch.where(mask.bool(), r, torch.zeros_like(r))


@dataclass(frozen=True)
class RTOTokenRewardConfig(PartConfig):
    """RTO's DPO token reward (see the module docstring).

    Paper: "DPO Meets PPO: Reinforced Token Optimization for RLHF", https://arxiv.org/abs/2404.18922;
    code zkshan2002/RTO (``dpo_reward_scale`` beta1 0.05, ``dpo_reward_clip`` 0.05 in
    ``examples/scripts/train_rto_llama_8b.sh``).
    """

    dpo_model: str = ""
    """The DPO policy of stage 1 (a Hugging Face directory, e.g. runs/dpo-.../final); "": the initial policy (reward 0)."""
    ref_model: str = ""
    """The reference (SFT) policy; "": the policy's weights when the run starts."""
    beta1: float = 0.05
    """Scale of the DPO log-ratio (the code's dpo_reward_scale)."""
    clip: float = 0.05
    """Clip of the scaled log-ratio, per token (the code's dpo_reward_clip)."""
    micro_batch_size: int = 8
    """Rows per no-grad forward of the two frozen models."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta1) and self.beta1 >= 0):
            raise ValueError(f"RTOTokenRewardConfig.beta1 must be >= 0, got {self.beta1}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"RTOTokenRewardConfig.clip must be > 0, got {self.clip}")
        if self.micro_batch_size < 1:
            raise ValueError(f"RTOTokenRewardConfig.micro_batch_size must be >= 1, got {self.micro_batch_size}")


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


@ROLLOUTS.register("rto_token_reward", config=RTOTokenRewardConfig)
class RTOTokenReward(RolloutPart):
    """Plain groups plus ``batch.token_rewards`` = RTO's clipped DPO log-ratio (module docstring)."""

    def __init__(self, cfg: RTOTokenRewardConfig, groups: GroupRollout):
        super().__init__(cfg, groups)
        from anypo.models import ModelConfig, load_model

        policy = getattr(groups.engine, "model", None)
        if not cfg.ref_model and policy is None:
            raise ValueError(
                "rto_token_reward: this engine has no in-process model to copy as the reference; set "
                "--algo.rollout.ref-model to the SFT model's directory"
            )
        self.ref = (
            load_model(ModelConfig(name=cfg.ref_model)).eval().requires_grad_(False)
            if cfg.ref_model
            else _frozen(policy)
        )
        if cfg.dpo_model:
            self.dpo = load_model(ModelConfig(name=cfg.dpo_model)).eval().requires_grad_(False)
        else:
            log.warning(
                "rto_token_reward: no --algo.rollout.dpo-model; the initial policy stands in for the DPO policy, "
                "so the DPO token reward is 0 (train one first: anypo train dpo, then pass its final/ directory)"
            )
            self.dpo = self.ref

    @torch.no_grad()
    def token_rewards(self, batch: RolloutBatch) -> Tensor:
        """``[N, T]`` clipped DPO log-ratio of every response token of ``batch`` (0 off the mask)."""
        from anypo.policy import batched_logprobs

        cfg = self.cfg
        lp_dpo = batched_logprobs(self.dpo, batch, 1.0, cfg.micro_batch_size)
        lp_ref = lp_dpo if self.dpo is self.ref else batched_logprobs(self.ref, batch, 1.0, cfg.micro_batch_size)
        return rto_token_rewards(lp_dpo, lp_ref, batch.response_mask, cfg.beta1, cfg.clip)

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        batch = self.groups.collect(requests, seed, group_offset)
        if batch.num_seqs == 0:
            return batch
        tok = self.token_rewards(batch).to(batch.rewards.dtype)
        batch.token_rewards = tok if batch.token_rewards is None else batch.token_rewards + tok
        mask = batch.response_mask.to(tok.dtype)
        self.add("rto_dpo_reward_per_seq", float((tok * mask).sum() / max(batch.num_seqs, 1)))
        self.add(
            "rto_clipped_frac", float(((tok.abs() >= self.cfg.clip) & mask.bool()).sum() / mask.sum().clamp(min=1))
        )
        return batch
