"""Guidance rollout parts: hints and partial solutions for the groups the policy cannot solve.

Both parts generate the drawn groups as they are, find the groups whose samples are all wrong (their
advantage would be 0: the "learning cliff"), and regenerate them with guidance inserted into the
prompt (``Request.insert``: prompt tokens, never in the loss). They differ in what they insert and
what they replace:

* :class:`ScafHints` (Scaf-GRPO): one sample per rung of the example's hint ladder, the first correct
  one (lowest rung) replaces the group's first sample, with its hinted prompt;
* :class:`GHPOHints` (GHPO): the whole group is regenerated with a growing prefix of the reference
  solution (25%, 50%, 75% of its characters) until some sample is right; the group keeps the last
  stage it was regenerated at, prompt and samples.

"All wrong" is judged by the task's correctness term (``extras["correct"]``, else ``reward >= 1``),
not by the total reward: a format bonus would hide an all-wrong group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from anypo.rollout.groups import Request, concat_batches
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.samplers.stats import correctness
from anypo.types import PartConfig, RolloutBatch

__all__ = [
    "DifficultyAug",
    "DifficultyAugConfig",
    "XRPOAllocConfig",
    "XRPOAllocation",
    "allocate",
    "t_quantile",
    "xrpo_priority",
    "GHPOConfig",
    "GHPOHints",
    "ScafConfig",
    "ScafHints",
    "all_wrong_groups",
    "ladder_levels",
    "solution_prefix",
    "splice",
]


def all_wrong_groups(batch: RolloutBatch) -> list[int]:
    """Group ids (in order of first appearance) whose every sample is wrong."""
    right = correctness(batch)
    order: list[int] = []
    solved: dict[int, bool] = {}
    for g, c in zip(batch.group_ids.tolist(), right, strict=True):
        if g not in solved:
            order.append(g)
            solved[g] = False
        solved[g] = solved[g] or c >= 1.0
    return [g for g in order if not solved[g]]


def splice(
    batch: RolloutBatch, rows: Sequence[int], new: RolloutBatch, new_rows: Sequence[int], pad: int
) -> RolloutBatch:
    """``batch`` with row ``rows[k]`` replaced by row ``new_rows[k]`` of ``new`` (prompt, response and
    every per-row field), keeping the replaced row's group id and the row order."""
    if not rows:
        return batch
    both = concat_batches([batch, new], pad)
    gids = both.group_ids.clone()
    index = list(range(batch.num_seqs))
    for r, s in zip(rows, new_rows, strict=True):
        gids[batch.num_seqs + s] = batch.group_ids[r]
        index[r] = batch.num_seqs + s
    both.group_ids = gids
    return both.select(torch.tensor(index, dtype=torch.long))


def _first_rows(batch: RolloutBatch) -> dict[int, list[int]]:
    """Group id -> its row indices, in order."""
    rows: dict[int, list[int]] = {}
    for r, g in enumerate(batch.group_ids.tolist()):
        rows.setdefault(g, []).append(r)
    return rows


# ---- Scaf-GRPO ----
@dataclass(frozen=True)
class ScafConfig(PartConfig):
    """Scaf-GRPO's tiered in-prompt hints for groups that stay unsolved.

    Paper: "Scaf-GRPO: Scaffolded Group Relative Policy Optimization for Enhancing LLM Reasoning",
    https://arxiv.org/abs/2510.19807; official code https://github.com/dvlab-research/Scaf-GRPO
    (``hint_mix_grpo/trainer/ray_trainer.py::fit``, hint block; ``build_new_message``). After the
    normal generation, from step ``warmup_steps + 1`` on, every group whose samples are all wrong
    gets one sample per hint level ``1..L`` (prompt = question + the level's hint); if any is right,
    the one at the lowest level ``l*`` replaces the group's first sample, prompt included
    (``replace_num=1``, ``replace_hint_prompt=False``); else the group stays as it is.

    Levels: the code's 8 levels are knowledge hints with 1..4 parts, then solution hints with 1..4
    parts (the planning tier of the paper is commented out in the code). Here the levels are the
    example's own hint ladder (``Example.hints``: method hints, then the first 1, 2, ... solution
    steps), weakest first; a ladder longer than ``max_levels`` is thinned to ``max_levels`` evenly
    spaced rungs, first and last kept (``ladder_levels``). The hint is inserted as ``Hint: <text>``
    after the question. Prompts without hints are left as they are.

    ``warmup_steps``: the code's script uses 50 (of a run of hundreds of steps); the preset uses
    fewer for 30-step runs (see ``anypo.algorithms.scaf_grpo``).
    """

    warmup_steps: int = 50
    """Hints start after this many steps (code ``warmup_steps=50``)."""
    max_levels: int = 8
    """Hint levels tried per stuck group, one sample each (code: 8)."""
    replace_num: int = 1
    """Samples of a rescued group replaced by hinted ones (code ``replace_num=1``)."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.max_levels < 1 or self.replace_num < 1:
            raise ValueError(
                f"need warmup_steps >= 0, max_levels >= 1, replace_num >= 1; got {self.warmup_steps}, "
                f"{self.max_levels}, {self.replace_num}"
            )


def ladder_levels(n_hints: int, max_levels: int) -> list[int]:
    """Indices of the rungs used: all when ``n_hints <= max_levels``, else ``max_levels`` evenly
    spaced ones with the first and the last (``round(k (n - 1) / (max_levels - 1))``)."""
    if n_hints <= max_levels:
        return list(range(n_hints))
    if max_levels == 1:
        return [n_hints - 1]
    return sorted({int(round(k * (n_hints - 1) / (max_levels - 1))) for k in range(max_levels)})


@ROLLOUTS.register("scaf_hints", config=ScafConfig)
class ScafHints(RolloutPart):
    """Scaf-GRPO's hint rescue of all-wrong groups (see :class:`ScafConfig`)."""

    cfg: ScafConfig

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        batch = self.groups.collect(requests, seed, group_offset)
        if step <= self.cfg.warmup_steps:
            return batch
        stuck = all_wrong_groups(batch)
        rows_of = _first_rows(batch)
        index_of = {g: int(batch.extras["prompt_index"][rows_of[g][0]]) for g in stuck}
        asks: list[tuple[int, int]] = []  # (group, level)
        hinted: list[Request] = []
        for g in stuck:
            hints = self.groups.examples[index_of[g]].hints if self.groups.examples is not None else ()
            for level in ladder_levels(len(hints), self.cfg.max_levels):
                asks.append((g, level))
                hinted.append(Request(index_of[g], self.cfg.replace_num, insert=f"Hint: {hints[level]}"))
        self.add("scaf_stuck_groups", len(stuck))
        if not hinted:
            return batch
        new = self.groups.collect(hinted, seed + 104_729, group_offset=0)
        right = correctness(new)
        new_rows = _first_rows(new)  # hinted request k -> its rows
        rows, take = [], []
        for g in stuck:
            ks = [k for k, (gg, _) in enumerate(asks) if gg == g]
            win = next((k for k in ks if any(right[r] >= 1.0 for r in new_rows[k])), None)  # lowest level
            if win is None:
                continue
            good = [r for r in new_rows[win] if right[r] >= 1.0]
            rows.extend(rows_of[g][: len(good)])
            take.extend(good)
            self.add("scaf_rescued_groups", 1)
            self.add("scaf_level_sum", asks[win][1] + 1)
        return splice(batch, rows, new, take, self.groups.tokenizer.pad_token_id)

    def pop_metrics(self) -> dict[str, float]:
        """``rollout/scaf_stuck_groups``, ``rollout/scaf_rescued_groups`` and the mean rung (1-based) of
        the rescues, ``rollout/scaf_level_mean``."""
        out = super().pop_metrics()
        total = out.pop("rollout/scaf_level_sum", 0.0)
        if out.get("rollout/scaf_rescued_groups"):
            out["rollout/scaf_level_mean"] = total / out["rollout/scaf_rescued_groups"]
        return out


# ---- GHPO ----
GHPO_HINT = "The following text is the beginning part of the answer, which you can refer to for solving the problem:"


@dataclass(frozen=True)
class GHPOConfig(PartConfig):
    """GHPO's adaptive partial-solution guidance for all-wrong groups.

    Paper: "GHPO: Adaptive Guidance for Stable and Efficient LLM Reinforcement Learning",
    https://arxiv.org/abs/2507.10628; official code https://github.com/hkgc-1/GHPO
    (``src/ghpo/ghpo_trainer.py::_generate_and_score_completions``). For each ratio ``w`` in
    ``ratios`` (0.25, 0.5, 0.75), every group whose samples are all wrong is regenerated in full
    (its ``G`` samples) from ``prompt + hint text + solution[:round(len(solution) w)]`` (a prefix in
    characters, Python ``round``) and replaced by it, prompt, samples and rewards; the next ratio
    touches only the groups still all wrong.

    Deviations: the code rebuilds, at each stage, the prompts of groups solved at an earlier stage
    from the unhinted prompt while keeping their hinted completions (a quirk); here a group keeps the
    prompt of the stage whose samples it keeps (the spec's recommendation). "All wrong" uses the
    correctness term (the code: accuracy reward <= 0). Prompts without a reference solution
    (``Example.solution``) are left as they are.
    """

    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    """Shares of the reference solution shown, tried in order (code, hard-coded)."""

    def __post_init__(self) -> None:
        if not self.ratios or any(not 0.0 < w <= 1.0 for w in self.ratios):
            raise ValueError(f"ratios must be a non-empty tuple of shares in (0, 1], got {self.ratios}")


def solution_prefix(solution: str, ratio: float) -> str:
    """The first ``round(len(solution) * ratio)`` characters (Python's round, as the code)."""
    return solution[: round(len(solution) * ratio)]


@ROLLOUTS.register("ghpo_hints", config=GHPOConfig)
class GHPOHints(RolloutPart):
    """GHPO's cascade of partial-solution hints (see :class:`GHPOConfig`)."""

    cfg: GHPOConfig

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        batch = self.groups.collect(requests, seed, group_offset)
        examples = self.groups.examples
        rows_of = _first_rows(batch)
        stuck = [
            g
            for g in all_wrong_groups(batch)
            if examples is not None and examples[int(batch.extras["prompt_index"][rows_of[g][0]])].solution
        ]
        self.add("ghpo_stuck_groups", len(stuck))
        for stage, w in enumerate(self.cfg.ratios):
            if not stuck:
                break
            reqs = []
            for g in stuck:
                i = int(batch.extras["prompt_index"][rows_of[g][0]])
                hint = f"{GHPO_HINT}\n{solution_prefix(examples[i].solution, w)}"
                reqs.append(Request(i, len(rows_of[g]), insert=hint))
            new = self.groups.collect(reqs, seed + 104_729 * (stage + 1), group_offset=0)
            new_rows = _first_rows(new)
            rows = [r for g in stuck for r in rows_of[g]]
            take = [r for k in range(len(stuck)) for r in new_rows[k]]
            batch = splice(batch, rows, new, take, self.groups.tokenizer.pad_token_id)
            rows_of = _first_rows(batch)
            self.add("ghpo_regenerated_groups", len(stuck))
            still = set(all_wrong_groups(batch))
            stuck = [g for g in stuck if g in still]
        self.add("ghpo_unsolved_groups", len(stuck))
        return batch


# ---- XRPO: uncertainty-driven rollout allocation and in-context seeding ----
def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile ``t_{p, df}`` (p > 0.5), by bisection on the CDF
    ``1 - I_{df / (df + t^2)}(df / 2, 1 / 2) / 2`` (regularised incomplete beta by its continued
    fraction); no scipy needed."""
    if df < 1 or not 0.5 < p < 1.0:
        raise ValueError(f"need df >= 1 and 0.5 < p < 1, got df={df}, p={p}")

    def cdf(t: float) -> float:
        return 1.0 - 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def xrpo_priority(rewards: Sequence[float], step: int, alpha: float, explore: float, extra: int = 0) -> float:
    """``Pi_q = Delta_q + phi_q`` at ``n = len(rewards) + extra`` rollouts: the expected shrinkage of
    the CI half-width of the mean reward from one more rollout, ``h(n) - h(n + 1)`` with ``h(n) =
    t_{1 - alpha/2, n - 1} s / sqrt(n)`` (``s`` the unbiased std of ``rewards``, held fixed), plus
    ``explore log(1 + step) / n``. Fewer than 2 rewards: no std, Delta 0."""
    n = len(rewards) + extra
    phi = explore * math.log(1.0 + step) / max(n, 1)
    if len(rewards) < 2:
        return phi
    mean = sum(rewards) / len(rewards)
    s = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    q = 1.0 - alpha / 2.0
    h = lambda k: t_quantile(q, k - 1) * s / math.sqrt(k)  # noqa: E731
    return h(n) - h(n + 1) + phi


@dataclass(frozen=True)
class XRPOAllocConfig(PartConfig):
    """XRPO's exploration half: hierarchical rollout allocation and in-context seeding.

    Paper: "XRPO: Pushing the limits of GRPO with Targeted Exploration and Exploitation",
    https://arxiv.org/abs/2510.06672. RECONSTRUCTED from a review (themoonlight.io) and the docstring
    of a third-party sampler (``Wodlfvllf/grpo-composer``, ``grpo_composer/data/sampling/xrpo.py``);
    the official code (github.com/UIUC-MLSys/XRPO) could not be read.

    * Allocation: each drawn prompt first gets ``base_samples``; the rest of the step's budget
      (``sum of the requested sizes - B base_samples``, so the step costs what uniform groups would)
      is given out in ``rounds`` rounds, one rollout at a time to the prompt of highest priority
      ``Pi_q = h_q(n_q) - h_q(n_q + 1) + explore log(1 + T) / n_q`` (see :func:`xrpo_priority`;
      ``T`` the step), recomputed with ``n_q + 1`` after each assignment, ``s_q`` fixed within a round.
      Greedy assignment, the base size, the rounds, ``alpha = 0.05`` and ``explore = 0.1`` are
      UNVERIFIED (the third-party sampler draws proportionally to Pi; 0.05 and 0.1 are its examples).
    * In-context seeding: a group still all wrong after allocation is regenerated (same size) with up
      to ``exemplars`` solved examples of other training prompts inserted after the question (the
      paper prepends them; corpus, number and placement UNVERIFIED). The exemplars come from a corpus
      of correct answers the policy itself produced (the most recent per prompt, at most
      ``corpus_size``, in the checkpoint). The exemplar text stays in the training prompt (the
      samples are on-policy for it; whether the paper keeps it for the log-probs is UNVERIFIED).
    """

    base_samples: int = 4
    """Rollouts every drawn prompt gets first (>= 2: the CI needs a std)."""
    rounds: int = 2
    """Allocation rounds for the remaining budget."""
    alpha: float = 0.05
    """Significance level of the CI (t_{1 - alpha/2})."""
    explore: float = 0.1
    """lambda of the exploration bonus lambda log(1 + T) / n."""
    seeding: bool = True
    """Regenerate all-wrong groups with solved exemplars in the prompt."""
    exemplars: int = 2
    """Solved examples inserted per seeded prompt."""
    corpus_size: int = 64
    """Solved examples kept (the most recent prompts)."""

    def __post_init__(self) -> None:
        if self.base_samples < 2 or self.rounds < 1 or self.exemplars < 1 or self.corpus_size < 1:
            raise ValueError(
                f"need base_samples >= 2, rounds >= 1, exemplars >= 1, corpus_size >= 1; got "
                f"{self.base_samples}, {self.rounds}, {self.exemplars}, {self.corpus_size}"
            )
        if not 0.0 < self.alpha < 1.0 or self.explore < 0.0:
            raise ValueError(f"need 0 < alpha < 1 and explore >= 0, got {self.alpha}, {self.explore}")


def allocate(rewards: list[list[float]], extra: int, step: int, alpha: float, explore: float) -> list[int]:
    """Extra rollouts per prompt: ``extra`` given one at a time to the highest priority (ties: first),
    a prompt's priority recomputed at ``n + 1`` after each assignment with its std held fixed."""
    counts = [0] * len(rewards)
    for _ in range(extra):
        pri = [xrpo_priority(rs, step, alpha, explore, counts[k]) for k, rs in enumerate(rewards)]
        best = max(range(len(rewards)), key=lambda k: (pri[k], -k))
        counts[best] += 1
    return counts


def _regroup(batch: RolloutBatch, new: RolloutBatch, new_groups: Sequence[int], pad: int) -> RolloutBatch:
    """``batch`` plus the rows of ``new`` as members of ``new_groups`` (one per row), request-major."""
    both = concat_batches([batch, new], pad)
    gids = both.group_ids.clone()
    gids[batch.num_seqs :] = torch.as_tensor(list(new_groups), dtype=gids.dtype)
    both.group_ids = gids
    return both.select(torch.argsort(gids, stable=True))


@ROLLOUTS.register("xrpo_allocation", config=XRPOAllocConfig)
class XRPOAllocation(RolloutPart):
    """XRPO's hierarchical allocation and in-context seeding (see :class:`XRPOAllocConfig`)."""

    cfg: XRPOAllocConfig

    def __init__(self, cfg: XRPOAllocConfig, groups):
        super().__init__(cfg, groups)
        self.corpus: list[tuple[int, str]] = []  # (prompt index, a correct answer), oldest first

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        pad = self.groups.tokenizer.pad_token_id
        budget = sum(r.n for r in requests)
        base = [Request(r.index, min(self.cfg.base_samples, r.n), r.insert, r.prefix) for r in requests]
        batch = self.groups.collect(base, seed, group_offset)
        extra = budget - sum(r.n for r in base)
        for rnd in range(self.cfg.rounds):
            share = extra // self.cfg.rounds + (1 if rnd < extra % self.cfg.rounds else 0)
            if share <= 0:
                continue
            rows = _first_rows(batch)
            gids = sorted(rows)
            rewards = [[float(batch.rewards[r]) for r in rows[g]] for g in gids]
            counts = allocate(rewards, share, step, self.cfg.alpha, self.cfg.explore)
            asks = [(g, c) for g, c in zip(gids, counts, strict=True) if c]
            new = self.groups.collect(
                [Request(int(batch.extras["prompt_index"][rows[g][0]]), c) for g, c in asks],
                seed + 7_777 * (rnd + 1),
                group_offset=0,
            )
            batch = _regroup(batch, new, [g for g, c in asks for _ in range(c)], pad)
            self.add("xrpo_extra_rollouts", share)
            self.add("xrpo_prompts_given_extra", len(asks))
        if self.cfg.seeding:
            batch = self._seed(batch, seed, pad)
        self._remember(batch)
        sizes = [len(v) for v in _first_rows(batch).values()]
        self.add("xrpo_group_size_max", max(sizes) if sizes else 0)
        return batch

    def _seed(self, batch: RolloutBatch, seed: int, pad: int) -> RolloutBatch:
        rows_of = _first_rows(batch)
        stuck = all_wrong_groups(batch)
        reqs, groups = [], []
        for g in stuck:
            i = int(batch.extras["prompt_index"][rows_of[g][0]])
            shots = [(j, a) for j, a in reversed(self.corpus) if j != i][: self.cfg.exemplars]
            if not shots or self.groups.examples is None:
                continue
            text = "\n\n".join(f"Question: {self.groups.examples[j].prompt}\n{a}" for j, a in shots)
            reqs.append(Request(i, len(rows_of[g]), insert=f"Solved examples:\n\n{text}"))
            groups.append(g)
        self.add("xrpo_seeded_groups", len(reqs))
        if not reqs:
            return batch
        new = self.groups.collect(reqs, seed + 15_551, group_offset=0)
        new_rows = _first_rows(new)
        rows = [r for g in groups for r in rows_of[g]]
        take = [r for k in range(len(groups)) for r in new_rows[k]]
        return splice(batch, rows, new, take, pad)

    def _remember(self, batch: RolloutBatch) -> None:
        """Add the batch's correct unguided answers to the exemplar corpus (one per prompt, newest)."""
        right = correctness(batch)
        for r, (i, ok) in enumerate(zip(batch.extras["prompt_index"], right, strict=True)):
            if ok >= 1.0 and not batch.extras["guided"][r]:
                self.corpus = [(j, a) for j, a in self.corpus if j != int(i)] + [(int(i), batch.extras["text"][r])]
        self.corpus = self.corpus[-self.cfg.corpus_size :]

    def state_dict(self) -> dict:
        return {"corpus": [list(e) for e in self.corpus]}

    def load_state_dict(self, state: dict) -> None:
        self.corpus = [(int(j), str(a)) for j, a in state.get("corpus", [])]


# ---- DeepVideo-R1: difficulty-aware augmentation ----
@dataclass(frozen=True)
class DifficultyAugConfig(PartConfig):
    """DeepVideo-R1's difficulty-aware augmentation of groups whose advantages vanish.

    Paper: "DeepVideo-R1: Video Reinforcement Fine-Tuning via Difficulty-aware Regressive GRPO",
    https://arxiv.org/abs/2506.07464 (abstract: "augments input prompts/videos to target solvable
    difficulty levels, enabling diverse reward signals"; code github.com/mlvlab/DeepVideoR1 not
    readable here). RECONSTRUCTED for text prompts: a group whose samples are all right is too easy
    and is regenerated (same size) from a harder prompt; one whose samples are all wrong is too hard
    and is regenerated from an easier one; the group keeps the regenerated prompt and samples.

    * harder: a distractor is inserted after the question, ``Unrelated note: <another training
      question>`` (a seeded choice; the text analogue of the paper's video perturbation, UNVERIFIED);
    * easier: the first rung of the example's hint ladder, ``Hint: <hint>`` (the paper's guidance for
      hard samples; its form is UNVERIFIED). Prompts without hints are left as they are.

    ``harder`` / ``easier`` switch either side off.
    """

    harder: bool = True
    """Regenerate all-right groups with a distractor in the prompt."""
    easier: bool = True
    """Regenerate all-wrong groups with the first hint in the prompt."""


@ROLLOUTS.register("difficulty_aug", config=DifficultyAugConfig)
class DifficultyAug(RolloutPart):
    """Difficulty-aware re-issue of all-equal groups (see :class:`DifficultyAugConfig`)."""

    cfg: DifficultyAugConfig

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        batch = self.groups.collect(requests, seed, group_offset)
        examples = self.groups.examples
        if examples is None:
            return batch
        right = correctness(batch)
        rows_of = _first_rows(batch)
        reqs, groups = [], []
        for g, rows in rows_of.items():
            i = int(batch.extras["prompt_index"][rows[0]])
            if self.cfg.harder and all(right[r] >= 1.0 for r in rows) and len(examples) > 1:
                j = (i + 1 + (seed + g) % (len(examples) - 1)) % len(examples)  # any other prompt, seeded
                reqs.append(Request(i, len(rows), insert=f"Unrelated note: {examples[j].prompt}"))
                groups.append(g)
                self.add("aug_harder_groups", 1)
            elif self.cfg.easier and all(right[r] < 1.0 for r in rows) and examples[i].hints:
                reqs.append(Request(i, len(rows), insert=f"Hint: {examples[i].hints[0]}"))
                groups.append(g)
                self.add("aug_easier_groups", 1)
        if not reqs:
            return batch
        new = self.groups.collect(reqs, seed + 31_337, group_offset=0)
        new_rows = _first_rows(new)
        rows = [r for g in groups for r in rows_of[g]]
        take = [r for k in range(len(groups)) for r in new_rows[k]]
        return splice(batch, rows, new, take, self.groups.tokenizer.pad_token_id)
