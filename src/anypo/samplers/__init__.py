"""Prompt samplers (kind ``sampler``), registered by the explicit imports below.

The interface every sampler has is in ``anypo.samplers.uniform``; per-prompt statistics kept across
steps are ``anypo.samplers.stats.PromptStats``."""

from anypo.samplers.curricula import (
    CurriculumConfig,
    CurriculumSampler,
    TaskFilterConfig,
    TaskFilterSampler,
    ValueSampler,
    ValueSamplingConfig,
    VASConfig,
    VASSampler,
)
from anypo.samplers.dynamic import DynamicSampler, DynamicSamplingConfig
from anypo.samplers.gdro import GDROConfig, GDROSampler
from anypo.samplers.stats import PromptStats
from anypo.samplers.uniform import UniformConfig, UniformSampler

__all__ = [
    "CurriculumConfig",
    "CurriculumSampler",
    "DynamicSampler",
    "DynamicSamplingConfig",
    "GDROConfig",
    "GDROSampler",
    "PromptStats",
    "TaskFilterConfig",
    "TaskFilterSampler",
    "UniformConfig",
    "UniformSampler",
    "VASConfig",
    "VASSampler",
    "ValueSampler",
    "ValueSamplingConfig",
]
