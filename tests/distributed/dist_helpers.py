"""Shared by the distributed tests: the tiny run they train (the e2e tests' tiny run, 2 prompts x 4 samples),
from tests/tiny_runs.py."""

from tiny_runs import TOY, tiny_config

__all__ = ["TOY", "tiny_config"]
