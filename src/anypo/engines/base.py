"""The engine protocol: prompts in, sampled token ids and their log-probabilities out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled."""

    temperature: float = 1.0
    """Softmax temperature; the trainer divides logits by the same value so log-probs agree."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    max_new_tokens: int = 64
    """Response length limit in tokens; longer responses are cut and flagged truncated."""
    stop: tuple[str, ...] = ()
    """Strings that end a response (the string is kept); EOS always ends it."""


@dataclass
class Generation:
    """Output of ``Engine.generate`` for B prompts with n samples each (N = B * n, prompt-major).

    Attributes:
        prompt_index: [N] which input prompt each row answers (0..B-1).
        response_ids: [N, T] sampled tokens, right-padded with the pad id.
        response_mask: [N, T] 1 on generated tokens (EOS included).
        logprobs: [N, T] log-probability of each sampled token under softmax(logits / temperature)
            of the engine's weights (0 on padding). No top-p / top-k renormalisation.
        truncated: [N] True where the response reached max_new_tokens without EOS or a stop string.
    """

    prompt_index: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    truncated: Tensor


class Engine(Protocol):
    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int | None = None
    ) -> Generation: ...

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None: ...

    # Optional: ``logprobs_exact(sampling) -> bool``, False where the engine's log-probs are not
    # log softmax(logits / temperature) for these settings; the trainer then recomputes them.
