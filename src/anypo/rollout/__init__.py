"""Rollout parts: turn prompts into a RolloutBatch using an engine."""

from anypo.rollout.groups import GroupRollout, concat_batches, drop_reward_errors

__all__ = ["GroupRollout", "concat_batches", "drop_reward_errors"]
