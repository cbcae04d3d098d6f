"""Shared by the distributed tests: the tiny run they train (the e2e tests' tiny run, 2 prompts x 4 samples),
from tests/tiny_runs.py."""

from tiny_runs import TOY, tiny_config

__all__ = ["CLUSTER_CPUS", "TOY", "tiny_config"]

CLUSTER_CPUS = 4
"""Logical CPUs of the Ray instance the tests share (conftest.py): room for 2 rollout actors + 2
learners, the largest run here."""
