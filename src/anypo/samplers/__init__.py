"""Prompt samplers (kind ``sampler``), registered by the explicit imports below."""

from anypo.samplers.dynamic import DynamicSampler, DynamicSamplingConfig
from anypo.samplers.uniform import UniformConfig, UniformSampler

__all__ = ["DynamicSampler", "DynamicSamplingConfig", "UniformConfig", "UniformSampler"]
