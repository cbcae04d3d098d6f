"""pass@k evaluation on a task's held-out split."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, arXiv 2107.03374, eq. 1).

    pass@k = 1 - C(n - c, k) / C(n, k), computed as a product to stay exact for large n.
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


def mean_pass_at_k(correct: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[int, float]:
    """Mean over prompts of pass@k; ``correct[p]`` holds the n outcomes of prompt p."""
    out = {}
    for k in ks:
        vals = [pass_at_k(len(c), sum(c), k) for c in correct]
        out[k] = sum(vals) / max(len(vals), 1)
    return out


def pass_at_k_by_difficulty(
    correct: Sequence[Sequence[bool]], difficulty: Sequence[object], ks: Sequence[int], prefix: str = "eval/"
) -> dict[str, float]:
    """Mean pass@k over the prompts of each difficulty level, as metric keys.

    Args:
        correct: ``correct[p]`` holds the n outcomes of prompt p.
        difficulty: the level of prompt p (``Example.meta.get("difficulty")``); prompts with None
            are left out. With no level at all the result is empty, so tasks without levels log
            nothing extra.
        ks: the k values.
        prefix: the key prefix.

    Returns:
        ``{"eval/pass@1/level_3": ..., "eval/prompts/level_3": count, ...}``, levels sorted.
    """
    if len(correct) != len(difficulty):
        raise ValueError(f"{len(correct)} prompts' outcomes but {len(difficulty)} difficulty levels")
    levels: dict[object, list[Sequence[bool]]] = {}
    for row, level in zip(correct, difficulty, strict=True):
        if level is not None:
            levels.setdefault(level, []).append(row)
    out: dict[str, float] = {}
    for level in sorted(
        levels, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v))
    ):
        rows = levels[level]
        for k, v in mean_pass_at_k(rows, ks).items():
            out[f"{prefix}pass@{k}/level_{level}"] = v
        out[f"{prefix}prompts/level_{level}"] = float(len(rows))
    return out


@torch.no_grad()
def evaluate(
    engine,
    tokenizer,
    prompts: Sequence[list[int]],
    score: Callable[[int, str, int, bool], float],
    n: int,
    sampling,
    batch_prompts: int = 8,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[list[float]], list[list[str]]]:
    """Sample ``n`` completions per prompt and score them.

    Args:
        engine: an ``anypo.engines.Engine``.
        prompts: token ids of each prompt (chat template applied).
        score: ``score(prompt_index, completion_text, num_tokens, truncated) -> reward``.
        n: samples per prompt.
        batch_prompts: prompts per generate call.
        progress: called with the number of prompts finished after each call.

    Returns:
        rewards[p][j] and completions[p][j] for prompt p, sample j.
    """
    rewards: list[list[float]] = []
    texts: list[list[str]] = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = list(prompts[start : start + batch_prompts])
        gen = engine.generate(chunk, n, sampling, seed=seed + start)
        lengths = gen.response_mask.sum(1).tolist()
        for b in range(len(chunk)):
            row_r, row_t = [], []
            for j in range(n):
                i = b * n + j
                text = tokenizer.decode(gen.response_ids[i, : int(lengths[i])], skip_special_tokens=True)
                row_t.append(text)
                row_r.append(score(start + b, text, int(lengths[i]), bool(gen.truncated[i])))
            rewards.append(row_r)
            texts.append(row_t)
        if progress is not None:
            progress(len(chunk))
    return rewards, texts
