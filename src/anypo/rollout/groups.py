"""Single-turn group rollout: G samples per prompt, scored by the task's reward."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from anypo.engines.base import Engine, SamplingConfig
from anypo.types import RewardResult, RolloutBatch, Sample


class GroupRollout:
    """Samples ``G`` completions per prompt with ``engine`` and scores them.

    Args:
        engine: generation backend.
        tokenizer: decodes completions for the reward.
        prompt_ids: token ids (chat template applied) of every training prompt.
        samples: ``samples[i]`` builds the reward's Sample of prompt i from a completion.
        reward: ``reward(sample) -> RewardResult`` (errors already turned into 0, counted and flagged
            with ``RewardResult.error``; the flags go to ``extras["reward_error"]``).
        sampling: sampling settings.
        group_size: G.
    """

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        prompt_ids: Sequence[list[int]],
        make_sample: Callable[[int, str, int, bool], Sample],
        reward: Callable[[Sample], RewardResult],
        sampling: SamplingConfig,
        group_size: int,
        correct_key: str | None = None,
    ):
        self.engine, self.tokenizer, self.prompt_ids = engine, tokenizer, prompt_ids
        self.make_sample, self.reward, self.sampling, self.G = make_sample, reward, sampling, group_size
        self.correct_key = correct_key  # reward component that says whether the answer is right

    def collect(self, indices: Sequence[int], seed: int, group_offset: int = 0) -> RolloutBatch:
        """Generate and score; ``group_offset`` keeps group ids unique across draws of one step."""
        G = self.G
        gen = self.engine.generate([self.prompt_ids[i] for i in indices], G, self.sampling, seed=seed)
        lengths = gen.response_mask.sum(1).tolist()
        texts, scores, components, errors = [], [], [], []
        for row in range(len(indices) * G):
            text = self.tokenizer.decode(gen.response_ids[row, : int(lengths[row])], skip_special_tokens=True)
            sample = self.make_sample(indices[row // G], text, int(lengths[row]), bool(gen.truncated[row]))
            res = self.reward(sample)
            texts.append(text)
            scores.append(res.score)
            components.append(res.components)
            errors.append(bool(getattr(res, "error", False)))
        extras: dict[str, Any] = {
            "text": texts,
            "components": components,
            "prompt_index": [int(indices[r // G]) for r in range(len(texts))],
            "reward_error": errors,  # True: a reward term failed, the score is no judgement (the loop drops it)
            "max_tokens": [int(self.sampling.max_new_tokens)] * len(texts),  # the generation budget L_max
        }
        if self.correct_key is not None and all(self.correct_key in c for c in components):
            extras["correct"] = [float(c[self.correct_key]) for c in components]
        prompt_ids, prompt_mask = left_pad([self.prompt_ids[i] for i in indices], self.tokenizer.pad_token_id)
        return RolloutBatch(
            response_mask=gen.response_mask,
            group_ids=torch.arange(len(indices)).repeat_interleave(G) + group_offset,
            rewards=torch.tensor(scores, dtype=torch.float32),
            prompt_ids=prompt_ids.repeat_interleave(G, 0),
            prompt_mask=prompt_mask.repeat_interleave(G, 0),
            response_ids=gen.response_ids,
            old_logprobs=gen.logprobs.float(),
            truncated=gen.truncated,
            extras=extras,
        )

    def greedy_rewards(self, batch: RolloutBatch, seed: int) -> tuple[Tensor, dict[str, float]]:
        """The reward of one greedy response to each group's prompt, for every row of the group.

        The response is decoded with ``top_k=1`` (the most likely token at every position; exact
        ties, which a float model practically never has, are broken at random), scored by the same
        reward as the samples, and never enters the batch.

        Args:
            batch: the step's batch (``group_ids`` [N], ``extras["prompt_index"]``).
            seed: generation seed (only ties use it).

        Returns:
            ``greedy_rewards`` [N] in the dtype of ``batch.rewards`` (NaN where the greedy response's
            reward failed) and the metrics ``rollout/greedy_tokens``, ``reward/greedy_mean``,
            ``reward/greedy_errors``.
        """
        rows: dict[int, int] = {}  # group id -> its first row
        for row, g in enumerate(batch.group_ids.tolist()):
            rows.setdefault(g, row)
        prompts = [int(batch.extras["prompt_index"][r]) for r in rows.values()]
        greedy = dataclasses.replace(self.sampling, top_k=1, top_p=1.0)
        gen = self.engine.generate([self.prompt_ids[i] for i in prompts], 1, greedy, seed=seed)
        lengths = gen.response_mask.sum(1).tolist()
        scores = []
        for k, i in enumerate(prompts):
            text = self.tokenizer.decode(gen.response_ids[k, : int(lengths[k])], skip_special_tokens=True)
            res = self.reward(self.make_sample(i, text, int(lengths[k]), bool(gen.truncated[k])))
            scores.append(float("nan") if getattr(res, "error", False) else float(res.score))
        by_group = dict(zip(rows, scores, strict=True))
        out = torch.tensor([by_group[g] for g in batch.group_ids.tolist()], dtype=batch.rewards.dtype)
        ok = [s for s in scores if not math.isnan(s)]
        m = {
            "rollout/greedy_tokens": float(sum(lengths)),
            "reward/greedy_errors": float(len(scores) - len(ok)),
        }
        if ok:
            m["reward/greedy_mean"] = sum(ok) / len(ok)
        return out, m


def drop_reward_errors(batch: RolloutBatch) -> tuple[RolloutBatch, int]:
    """The rows whose reward did not fail (``extras["reward_error"]``), and how many were dropped.

    A failed reward scores 0, which is no judgement of the sample: kept, it would enter its group's
    baseline and push the group's correct answers down. Dropped, it is out of the group statistics,
    the loss and the sampler's keep test; its group is one sample smaller.
    """
    flags = batch.extras.get("reward_error")
    if not flags or not any(flags):
        return batch, 0
    ok = ~torch.tensor(flags, dtype=torch.bool)
    return batch.select(ok.nonzero().flatten()), int((~ok).sum())


def left_pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """[n, P] ids and mask with every sequence ending in the last column."""
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, P - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, P - len(s) :] = 1
    return ids, mask


def _pad_to(x: Tensor, width: int, value: float, left: bool) -> Tensor:
    extra = width - x.shape[1]
    if extra == 0:
        return x
    pad = x.new_full((x.shape[0], extra), value)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def concat_batches(batches: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Concatenate rollout batches of different padded lengths (prompts left, responses right)."""
    if len(batches) == 1:
        return batches[0]
    P = max(b.prompt_ids.shape[1] for b in batches)
    T = max(b.response_ids.shape[1] for b in batches)
    cat = lambda name, width, value, left: torch.cat([_pad_to(getattr(b, name), width, value, left) for b in batches])
    keys = set.intersection(*(set(b.extras) for b in batches))
    extras = {k: [v for b in batches for v in b.extras[k]] for k in keys}
    return RolloutBatch(
        response_mask=cat("response_mask", T, 0, False),
        group_ids=torch.cat([b.group_ids for b in batches]),
        rewards=torch.cat([b.rewards for b in batches]),
        prompt_ids=cat("prompt_ids", P, pad_id, True),
        prompt_mask=cat("prompt_mask", P, 0, True),
        response_ids=cat("response_ids", T, pad_id, False),
        old_logprobs=cat("old_logprobs", T, 0.0, False),
        truncated=torch.cat([b.truncated for b in batches]),
        extras=extras,
    )
