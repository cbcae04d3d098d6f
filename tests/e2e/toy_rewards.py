"""Rewards for end-to-end tests on the random tiny model, whose completions are gibberish.

``char_sum`` varies from sample to sample, so every group has non-zero advantages and every preset
produces a gradient; it is deterministic in the completion text, so runs are reproducible.
"""


def char_sum(sample) -> float:
    return (sum(ord(c) for c in sample.completion) % 11) / 10.0


def raises(sample) -> float:
    raise RuntimeError("reward service unavailable")


def nan_reward(sample) -> float:
    return float("nan")
