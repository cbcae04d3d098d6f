"""A learned reward model (``anypo train reward_model``) as a preference source.

``P(y > y2 | x) = sigmoid((r(x, y) - r(x, y2)) / T)`` (hard labels at ``T = 0``), ``gold(x, y) = r(x, y)``,
with ``r`` the exported reward model: the prompt through the tokenizer's chat template, the response
followed by the end-of-turn token, exactly as the reward model was trained
(``anypo.train_pref.tokenize_pairs``). Use it as the proxy of an over-optimisation study
(``--oracle.kind reward_model --oracle.reward-model DIR``) with the verifier as the gold
(``--eval-oracle.kind verifier_bt``). A reward model always scores, so nothing is unjudged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anypo.oracles.base import _check_batch
from anypo.oracles.verifier_bt import bt_prob

__all__ = ["RewardModelOracle"]


class RewardModelOracle:
    """Bradley-Terry on a learned reward model's scores (see the module docstring).

    Args:
        path: the ``final/`` directory of an ``anypo train reward_model`` run.
        temperature: ``T >= 0``.
        micro_batch_size: sequences per forward.
    """

    def __init__(self, path: str | Path, temperature: float = 0.0, micro_batch_size: int = 8):
        from anypo.train_rm import load_reward_model

        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"oracle.temperature must be >= 0 (0 for hard labels), got {temperature}")
        self.model, self.tokenizer = load_reward_model(path)
        self.temperature, self.micro = float(temperature), micro_batch_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.num_unjudged = 0

    def _ids(self, x: Any, y: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(x.messages(), tokenize=False, add_generation_prompt=True)
        prompt = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [*prompt, *self.tokenizer(y, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id]

    @torch.no_grad()
    def gold(self, xs: Sequence[Any], ys: Sequence[str]) -> Tensor:
        from anypo.train_pref import _chunks, _pad

        _check_batch(xs, ys)
        rows = [self._ids(x, y) for x, y in zip(xs, ys, strict=True)]
        out = torch.zeros(len(rows), dtype=torch.float64)
        for chunk in _chunks(list(range(len(rows))), self.micro):
            ids, mask = _pad([rows[i] for i in chunk], self.pad_id, left=False)
            out[chunk] = self.model(ids, mask).double()
        return out

    def prob(self, xs: Sequence[Any], ys: Sequence[str], y2s: Sequence[str]) -> Tensor:
        _check_batch(xs, ys, y2s)
        s = self.gold([*xs, *xs], [*ys, *y2s]).tolist()
        n = len(ys)
        return torch.tensor([bt_prob(s[i], s[n + i], self.temperature) for i in range(n)], dtype=torch.float64)
