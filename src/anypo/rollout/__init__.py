"""Rollout parts: turn prompts into a RolloutBatch using an engine."""

from anypo.rollout.groups import GroupRollout, concat_batches

__all__ = ["GroupRollout", "concat_batches"]
