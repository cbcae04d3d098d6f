"""Per-step statistics of a rollout batch that the online loop logs for every preset (rewards,
lengths, lengths by correctness, advantage scale), and trimming a batch to its first groups."""

from __future__ import annotations

import logging

import torch

from anypo.types import RolloutBatch

__all__ = [
    "advantage_metrics",
    "first_groups",
    "first_samples",
    "length_by_correctness",
    "rollout_metrics",
    "warn_reward_errors",
]

log = logging.getLogger("anypo.train")


def first_groups(batch: RolloutBatch, n_groups: int) -> RolloutBatch:
    """Keep the first ``n_groups`` distinct groups (a draw may overfill the batch)."""
    seen: list[int] = []
    for g in batch.group_ids.tolist():
        if g not in seen:
            seen.append(g)
    if len(seen) <= n_groups:
        return batch
    keep = torch.isin(batch.group_ids, torch.tensor(seen[:n_groups]))
    return batch.select(keep.nonzero().flatten())


def rollout_metrics(batch: RolloutBatch, generated: RolloutBatch, draws: int) -> dict[str, float]:
    """Reward and length statistics of every scored sample of the step (all draws, reward errors out)."""
    if generated.num_seqs == 0:
        return {"rollout/draws": float(draws), "rollout/trained_seqs": 0.0}
    r = generated.rewards
    lengths = generated.response_mask.sum(1).float()
    same = [
        bool((r[generated.group_ids == g] == r[generated.group_ids == g][0]).all())
        for g in generated.group_ids.unique()
    ]
    correct = generated.extras.get("correct", [])
    return {
        **_mixed_correct(generated.group_ids, correct),
        "reward/mean": float(r.mean()),
        "reward/std": float(r.std()) if len(r) > 1 else 0.0,
        **({"reward/accuracy": sum(correct) / len(correct)} if correct and all(c == c for c in correct) else {}),
        "rollout/all_equal_group_frac": sum(same) / len(same),
        "rollout/draws": float(draws),
        "rollout/trained_seqs": float(batch.num_seqs),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/truncated_frac": float(generated.truncated.float().mean()),
        **length_by_correctness(lengths, correct),
    }


def _mixed_correct(group_ids: torch.Tensor, correct: list) -> dict[str, float]:
    """``rollout/mixed_correct_group_frac``: the share of groups with both a correct and a wrong sample,
    the groups whose advantage carries a correctness signal (a format bonus alone also makes rewards
    differ). Absent when the reward has no correctness term (or a sample's is NaN)."""
    if not correct or len(correct) != len(group_ids) or any(c != c for c in correct):
        return {}
    by_group: dict[int, set[bool]] = {}
    for g, c in zip(group_ids.tolist(), correct, strict=True):
        by_group.setdefault(g, set()).add(bool(c))
    return {"rollout/mixed_correct_group_frac": sum(len(v) == 2 for v in by_group.values()) / len(by_group)}


def advantage_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Scale of the advantages over response tokens (what normalising estimators such as BNPO change),
    and the advantage part's own diagnostics (``batch.part_metrics``, e.g. GPG's alpha) as ``advantage/<key>``."""
    own = {f"advantage/{k}": float(v) for k, v in (batch.part_metrics or {}).items()}
    a = batch.advantages.detach().float().abs()
    mask = batch.response_mask.bool()
    if not mask.any():
        return own
    a = a[mask]
    return own | {"advantage/abs_mean": float(a.mean()), "advantage/abs_max": float(a.max())}


def length_by_correctness(lengths: torch.Tensor, correct: list[float]) -> dict[str, float]:
    """Mean length of the correct and of the incorrect responses (what length-aware methods change)."""
    if not correct or len(correct) != len(lengths) or any(c != c for c in correct):
        return {}
    ok = torch.tensor([c >= 0.5 for c in correct])
    out = {}
    if ok.any():
        out["response/length_correct_mean"] = float(lengths[ok].mean())
    if (~ok).any():
        out["response/length_incorrect_mean"] = float(lengths[~ok].mean())
    return out


def first_samples(batch: RolloutBatch, n: int) -> list[dict]:
    """The first ``n`` completions of the batch as rows of ``samples.jsonl``."""
    return [
        {"prompt_index": batch.extras["prompt_index"][i], "completion": batch.extras["text"][i], "reward": float(r)}
        for i, r in enumerate(batch.rewards[: min(n, batch.num_seqs)].tolist())
    ]


def warn_reward_errors(step: int, n_failed: int, n_generated: int, warn_frac: float) -> bool:
    """Warn when the reward failed on more than ``warn_frac`` of the step's samples; True if it warned."""
    frac = n_failed / max(n_generated, 1)
    if frac <= warn_frac:
        return False
    log.warning(
        "step %d: the reward failed on %d of %d samples (%.0f%%); they are dropped from training and "
        "counted as reward/error_samples (warned once per run; see reward_error_warn_frac)",
        step, n_failed, n_generated, 100 * frac,
    )  # fmt: skip
    return True
