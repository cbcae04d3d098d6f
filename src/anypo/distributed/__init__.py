"""Distributed training: the only package of anypo that imports ray or sets up process groups.

- ``anypo.distributed.learner``: the learner side, on torch.distributed only (no ray): a process
  group, the policy sharded with FSDP2, and ``LearnerContext``, the online loop's ``Context`` whose
  mini-batch step splits each mini-batch over the group's ranks with the mini-batch's global counts.
- ``anypo.distributed.ray_run``: the Ray side: rollout actors (engines), learner actors, weight sync,
  and the driver loop that the shared run scaffold (``anypo.run``) drives.

``import anypo.distributed`` imports neither torch.distributed's process groups nor ray; ``train`` imports
ray when called. See docs/distributed.md.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["dist_config_problems", "train"]

PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def dist_config_problems(cfg) -> list[str]:
    """One line per value of ``cfg.dist`` (and per setting the distributed loop does not support yet)
    that would fail the run, each naming the field and the fix; empty when the config can run."""
    d, algo = cfg.dist, cfg.algo
    out = []
    if d.backend not in ("none", "ray"):
        out.append(f"dist.backend must be 'none' or 'ray', got {d.backend!r}")
    if d.backend != "ray":
        return out
    if d.rollout_restarts < 0:
        out.append(f"dist.rollout-restarts must be >= 0, got {d.rollout_restarts}")
    if d.asynchronous and d.max_staleness < 1:
        out.append(f"dist.max-staleness must be >= 1 with dist.async, got {d.max_staleness}")
    for name in ("rollout_workers", "learners", "cpus_per_actor"):
        if getattr(d, name) < 1:
            out.append(f"dist.{name.replace('_', '-')} must be >= 1, got {getattr(d, name)}")
    if d.placement not in PLACEMENTS:
        out.append(f"dist.placement must be one of {', '.join(PLACEMENTS)}, got {d.placement!r}")
    if d.timeout_s <= 0:
        out.append(f"dist.timeout-s must be > 0, got {d.timeout_s}")
    if d.object_store_mb < 100:
        out.append(f"dist.object-store-mb must be >= 100 (Ray's minimum is about 75 MB), got {d.object_store_mb}")
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        out.append(
            "engine vllm in the rollout actors needs vLLM installed where they run (docs/engines.md: "
            "pip install -e '.[vllm]' on a CPU machine); or use --engine hf"
        )
    if cfg.model.lora_rank > 0:
        out.append("dist.backend ray shards full fine-tuning only for now: set model.lora-rank 0")
    unsupported = {
        "values": "a critic",
        "old_full_logprobs": "a step-start policy copy (MDPO)",
        "whole_minibatch": "a whole mini-batch in one micro-batch (DRPO)",
    }
    for need, what in unsupported.items():
        if algo.needs(need):
            out.append(
                f"dist.backend ray does not support parts that need {what} (needs_{need}) yet: run it with dist.backend none"
            )
    if algo.replay_schedule().active:
        out.append("dist.backend ray does not run stale-rollout (replay) schedules yet: run it with dist.backend none")
    if getattr(algo, "rollout", None) is not None:
        out.append("dist.backend ray runs plain group rollouts only for now: set no rollout part, or dist.backend none")
    return out


def train(cfg, resume: str | Path | None = None) -> Path:
    """``anypo train <preset> --dist.backend ray ...``: the online loop on Ray (see ``ray_run.train``)."""
    from anypo.distributed.ray_run import train as ray_train

    return ray_train(cfg, resume)
