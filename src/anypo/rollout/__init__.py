"""Rollout parts: turn prompts into a RolloutBatch using an engine (kind ``rollout``, registered by
the explicit imports below; see ``anypo.rollout.parts`` for the interface)."""

from anypo.rollout.aepo import AEPOController, AEPOControllerConfig
from anypo.rollout.base_samples import BaseRollouts, BaseRolloutsConfig
from anypo.rollout.carry import TPPOCarry, TPPOCarryConfig
from anypo.rollout.drafts import DraftRefine, DraftRefineConfig
from anypo.rollout.experience import ExperienceReplay, ExperienceReplayConfig
from anypo.rollout.explain import SelfExplain, SelfExplainConfig
from anypo.rollout.groups import GroupRollout, Request, concat_batches, drop_reward_errors
from anypo.rollout.guidance import (
    DifficultyAug,
    DifficultyAugConfig,
    GHPOConfig,
    GHPOHints,
    ScafConfig,
    ScafHints,
    XRPOAllocation,
    XRPOAllocConfig,
)
from anypo.rollout.parts import Groups, GroupsConfig, RolloutPart
from anypo.rollout.reprompt import SDPOReprompt, SDPORepromptConfig
from anypo.rollout.reset import DatasetReset, DatasetResetConfig
from anypo.rollout.rto import RTOTokenReward, RTOTokenRewardConfig
from anypo.rollout.shaping import ProgressiveReward, ProgressiveRewardConfig

__all__ = [
    "AEPOController",
    "AEPOControllerConfig",
    "BaseRollouts",
    "BaseRolloutsConfig",
    "DatasetReset",
    "DatasetResetConfig",
    "DifficultyAug",
    "DifficultyAugConfig",
    "DraftRefine",
    "DraftRefineConfig",
    "ExperienceReplay",
    "ExperienceReplayConfig",
    "GHPOConfig",
    "GHPOHints",
    "GroupRollout",
    "Groups",
    "GroupsConfig",
    "Request",
    "ProgressiveReward",
    "ProgressiveRewardConfig",
    "RTOTokenReward",
    "RTOTokenRewardConfig",
    "RolloutPart",
    "SDPOReprompt",
    "SDPORepromptConfig",
    "ScafConfig",
    "ScafHints",
    "SelfExplain",
    "SelfExplainConfig",
    "TPPOCarry",
    "TPPOCarryConfig",
    "XRPOAllocConfig",
    "XRPOAllocation",
    "concat_batches",
    "drop_reward_errors",
]
