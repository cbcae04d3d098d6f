"""Curricula by measured difficulty: prime-rl's difficulty pools and MMR1's variance-aware sampling.

Both keep a per-prompt table (:class:`anypo.samplers.stats.PromptStats`) in their ``state_dict``,
and draw from a seeded stream indexed by ``(seed, draw number)``, so a resumed run draws exactly what
the uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anypo.ops import group_reduce
from anypo.samplers.stats import PromptStats, correctness, per_prompt_pass
from anypo.samplers.uniform import SAMPLERS, UniformConfig, UniformSampler
from anypo.types import RolloutBatch

__all__ = [
    "CurriculumConfig",
    "CurriculumSampler",
    "TaskFilterConfig",
    "TaskFilterSampler",
    "VASConfig",
    "VASSampler",
    "ValueSampler",
    "ValueSamplingConfig",
    "task_value",
    "difficulty_pools",
    "distinct_n",
    "pool_counts",
    "vps_weights",
]


# ---- difficulty pools (prime-rl) ----
@dataclass(frozen=True)
class CurriculumConfig(UniformConfig):
    """Prompt-difficulty curriculum: pools by running pass rate, a fixed share of easy and hard prompts.

    Source: prime-rl's difficulty-pool buffer (https://github.com/PrimeIntellect-ai/prime-rl,
    ``src/prime_rl/orchestrator/buffer.py::Buffer.update / sample_problems`` and
    ``DifficultyPoolBufferConfig``: ``easy_border 0.8``, ``hard_border 0.2``, ``easy_fraction 0.1``,
    ``hard_fraction 0.1``). After each draw of a prompt, its pool is set from that draw's pass
    rate ``p`` (share of correct samples): ``easy`` if ``p >= easy_border``, ``hard`` if
    ``p <= hard_border``, else ``normal``; a prompt never drawn is ``normal``. A batch of ``B``
    prompts takes ``floor(B easy_fraction)`` easy and ``floor(B hard_fraction)`` hard prompts and
    the rest normal, each drawn uniformly without replacement inside its pool; a pool with too few
    prompts passes its deficit to the normal pool (as prime-rl).

    Deviations: prime-rl classifies by the mean reward; here by the correctness term (the pass
    rate: a format bonus would make an all-wrong group look "normal"). Where the normal pool is
    also short, the deficit is filled from the other pools (prime-rl returns a smaller batch; a
    step here always has ``B`` prompts). Samples of guided rows (hints) do not count.
    """

    easy_border: float = 0.8
    """A prompt whose last draw passed at least this share is easy."""
    hard_border: float = 0.2
    """A prompt whose last draw passed at most this share is hard."""
    easy_fraction: float = 0.1
    """Share of each batch drawn from the easy pool (floor)."""
    hard_fraction: float = 0.1
    """Share of each batch drawn from the hard pool (floor)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.hard_border < self.easy_border <= 1.0:
            raise ValueError(
                f"need 0 <= hard_border < easy_border <= 1, got hard_border={self.hard_border}, "
                f"easy_border={self.easy_border}"
            )
        if self.easy_fraction < 0 or self.hard_fraction < 0 or self.easy_fraction + self.hard_fraction > 1:
            raise ValueError(
                f"easy_fraction and hard_fraction must be >= 0 and sum to <= 1, got "
                f"{self.easy_fraction} and {self.hard_fraction}"
            )


def difficulty_pools(last_pass: np.ndarray, easy_border: float, hard_border: float) -> np.ndarray:
    """[n] 0 normal, 1 easy, 2 hard from the last pass rate per prompt (NaN: never drawn, normal)."""
    pools = np.zeros(len(last_pass), dtype=np.int64)
    seen = ~np.isnan(last_pass)
    pools[seen & (last_pass >= easy_border)] = 1
    pools[seen & (last_pass <= hard_border) & ~(last_pass >= easy_border)] = 2
    return pools


def pool_counts(batch: int, easy_fraction: float, hard_fraction: float, sizes: tuple[int, int, int]) -> list[int]:
    """How many prompts each pool (normal, easy, hard) gives a batch of ``batch``: ``floor(B f)`` easy
    and hard, the rest normal; a short pool passes its deficit to normal, a short normal pool to easy
    then hard."""
    n_easy, n_hard = min(int(batch * easy_fraction), sizes[1]), min(int(batch * hard_fraction), sizes[2])
    n_normal = min(batch - n_easy - n_hard, sizes[0])
    rest = batch - n_easy - n_hard - n_normal
    extra_easy = min(rest, sizes[1] - n_easy)
    extra_hard = min(rest - extra_easy, sizes[2] - n_hard)
    return [n_normal, n_easy + extra_easy, n_hard + extra_hard]


@SAMPLERS.register("curriculum", config=CurriculumConfig)
class CurriculumSampler(UniformSampler):
    """prime-rl's difficulty pools (see :class:`CurriculumConfig`).

    Args:
        cfg: the sampler config.
        num_prompts: size of the prompt dataset.
        prompts_per_step: B, prompts per draw.
        seed: seed of the draws.
    """

    cfg: CurriculumConfig

    def __init__(self, cfg: CurriculumConfig, num_prompts: int, prompts_per_step: int, seed: int):
        super().__init__(cfg, num_prompts, prompts_per_step, seed)
        self.stats = PromptStats(num_prompts)
        self.draws = 0
        self.step = 0
        self._drawn = np.zeros(3)

    def pools(self) -> np.ndarray:
        return difficulty_pools(self.stats.last, self.cfg.easy_border, self.cfg.hard_border)

    def next_prompts(self, step: int) -> list[int]:
        """``B`` prompts: the pools' shares, uniformly without replacement inside each pool."""
        self.step = step
        rng = np.random.default_rng([self.seed, 17, self.draws])
        self.draws += 1
        pools = self.pools()
        members = [np.flatnonzero(pools == k) for k in range(3)]
        counts = pool_counts(self.prompts_per_step, self.cfg.easy_fraction, self.cfg.hard_fraction,
                             (len(members[0]), len(members[1]), len(members[2])))  # fmt: skip
        out: list[int] = []
        for k in range(3):
            if counts[k]:
                out.extend(int(i) for i in rng.choice(members[k], size=counts[k], replace=False))
            self._drawn[k] += counts[k]
        while len(out) < self.prompts_per_step:  # fewer prompts than B: repeat (a tiny dataset)
            out.append(int(rng.integers(self.num_prompts)))
        return out

    def observe(self, batch: RolloutBatch) -> None:
        self.stats.update(batch, self.step)

    def pop_metrics(self) -> dict[str, float]:
        pools = self.pools()
        out = {f"pool_{name}_frac": float((pools == k).mean()) for k, name in enumerate(("normal", "easy", "hard"))}
        total = max(float(self._drawn.sum()), 1.0)
        out |= {
            f"drawn_{name}_frac": float(self._drawn[k] / total) for k, name in enumerate(("normal", "easy", "hard"))
        }
        self._drawn = np.zeros(3)
        return out

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"stats": self.stats.state_dict(), "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.stats.load_state_dict(state["stats"])
        self.draws = int(state["draws"])


# ---- variance-aware sampling (MMR1) ----
@dataclass(frozen=True)
class VASConfig(UniformConfig):
    """Variance-aware sampling (VAS) with the variance promotion score (VPS).

    Paper: "MMR1: Enhancing Multimodal Reasoning with Variance-Aware Sampling and Open Resources",
    https://arxiv.org/abs/2509.21268, Alg. 1; official code https://github.com/LengSicong/MMR1
    (``verl/curriculum/metrics.py``, ``samplers.py::MixedCurriculumSampler``,
    ``ray_trainer.py::_update_curriculum_weights``). Every ``rescore_every`` steps (and before the
    first draw) every prompt of the pool gets ``rescore_samples`` rollouts of the current policy::

        P(x)   = mean_j correct(x, y_j)              # pass rate
        OVS(x) = P (1 - P)                           # outcome variance score (Bernoulli variance)
        TDS(x) = distinct-3 of the rollouts' token ids  # trajectory diversity score
        VPS(x) = alpha OVS + beta TDS
        w      = (VPS - min VPS) / (max VPS - min VPS + 1e-8)   # over the pool (code)
        w      <- momentum w_old + (1 - momentum) w              # code's curriculum_momentum

    A batch of ``B`` prompts takes ``floor(mixture B)`` prompts drawn with replacement with
    probability ``w / sum w`` and the rest uniformly from a seeded permutation of the pool, cycled.

    Deviations: MMR1 scores the whole dataset; here a seeded subset of ``pool`` prompts is the
    dataset VAS sees (0: every training prompt), since a full pass over 10,000 prompts per update is
    out of reach on a CPU. TDS: the paper says "e.g. inverse self-BLEU or distinct-n"; the code offers
    ``distinct_3`` on token ids, used here (the paper's exact choice is UNVERIFIED). When every
    weight is 0 (all scores equal) the weighted half draws uniformly.
    """

    rescore_every: int = 4
    """T_update: steps between re-scorings of the pool (mmr1.yaml ``curriculum_update_freq=4``)."""
    rescore_samples: int = 8
    """N: rollouts per prompt when re-scoring (mmr1.yaml ``curriculum_rollout_n=8``)."""
    mixture: float = 0.5
    """lambda: share of each batch drawn by weight (paper and code 0.5)."""
    alpha: float = 0.8
    """Weight of OVS in VPS (paper main runs 0.8)."""
    beta: float = 0.2
    """Weight of TDS in VPS (paper main runs 0.2)."""
    momentum: float = 0.0
    """EMA of the weights across re-scorings (mmr1.yaml 0.0: the new weights replace the old)."""
    pool: int = 0
    """Prompts VAS scores and samples (a seeded subset of the training set); 0: all of them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rescore_every < 1 or self.rescore_samples < 1:
            raise ValueError(
                f"rescore_every and rescore_samples must be >= 1, got {self.rescore_every}, {self.rescore_samples}"
            )
        if not 0.0 <= self.mixture <= 1.0 or not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"mixture and momentum must be in [0, 1], got {self.mixture}, {self.momentum}")
        if self.pool < 0:
            raise ValueError(f"pool must be >= 0 (0: every prompt), got {self.pool}")


def distinct_n(seqs: list[list[int]], n: int = 3) -> float:
    """Distinct-n of several token sequences: distinct n-grams / all n-grams, pooled (0 without n-grams)."""
    grams = [tuple(s[i : i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def vps_weights(pass_rate: np.ndarray, tds: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Min-max normalised VPS = alpha P(1-P) + beta TDS over the pool (MMR1's sampling weights)."""
    vps = alpha * pass_rate * (1.0 - pass_rate) + beta * tds
    return (vps - vps.min()) / (vps.max() - vps.min() + 1e-8)


@SAMPLERS.register("vas", config=VASConfig)
class VASSampler(UniformSampler):
    """MMR1's mixed weighted + uniform sampler with periodic re-scoring (see :class:`VASConfig`).

    Args:
        cfg: the sampler config.
        num_prompts: size of the prompt dataset.
        prompts_per_step: B, prompts per draw.
        seed: seed of the pool, the permutation and the weighted draws.
    """

    cfg: VASConfig

    def __init__(self, cfg: VASConfig, num_prompts: int, prompts_per_step: int, seed: int):
        super().__init__(cfg, num_prompts, prompts_per_step, seed)
        size = num_prompts if cfg.pool == 0 else min(cfg.pool, num_prompts)
        rng = np.random.default_rng([seed, 29])
        self.pool = np.sort(rng.permutation(num_prompts)[:size]) if size < num_prompts else np.arange(num_prompts)
        self.weights: np.ndarray | None = None  # [pool] sampling weights, None before the first scoring
        self.pass_rate = np.full(len(self.pool), np.nan)
        self.last_rescore = -1
        self.draws = 0
        self._metrics: dict[str, float] = {}

    def rescore_prompts(self, step: int) -> tuple[list[int], int]:
        """The whole pool before the first draw and every ``rescore_every`` steps after the last scoring."""
        if self.last_rescore < 0 or step - self.last_rescore >= self.cfg.rescore_every:
            self.last_rescore = step
            return self.pool.tolist(), self.cfg.rescore_samples
        return [], 0

    def rescore(self, batch: RolloutBatch) -> None:
        """VPS of every pool prompt from its rollouts; new weights (with momentum)."""
        passed = per_prompt_pass(batch, skip_guided=False)
        where = {int(i): k for k, i in enumerate(self.pool)}
        ids = batch.require("response_ids", "the re-scoring rollout fills it")
        rows: dict[int, list[list[int]]] = {}
        for r, i in enumerate(batch.extras["prompt_index"]):
            rows.setdefault(int(i), []).append(ids[r][batch.response_mask[r].bool()].tolist())
        p = self.pass_rate.copy()
        tds = np.zeros(len(self.pool))
        for i, (k, n) in passed.items():
            p[where[i]] = k / n
            tds[where[i]] = distinct_n(rows[i], 3)
        p = np.nan_to_num(p, nan=0.0)  # a prompt whose every sample failed to score: treated as unsolved
        new = vps_weights(p, tds, self.cfg.alpha, self.cfg.beta)
        m = self.cfg.momentum
        self.weights = new if self.weights is None else m * self.weights + (1 - m) * new
        self.pass_rate = p
        self._metrics = {
            "vas_pass_rate_mean": float(p.mean()),
            "vas_ovs_mean": float((p * (1 - p)).mean()),
            "vas_tds_mean": float(tds.mean()),
            "vas_zero_weight_frac": float((self.weights <= 0).mean()),
        }

    def next_prompts(self, step: int) -> list[int]:
        """``floor(mixture B)`` prompts by weight (with replacement), the rest from the cycled permutation."""
        rng = np.random.default_rng([self.seed, 31, self.draws])
        self.draws += 1
        n_w = int(math.floor(self.cfg.mixture * self.prompts_per_step))
        w = self.weights if self.weights is not None else np.ones(len(self.pool))
        prob = w / w.sum() if w.sum() > 0 else np.full(len(self.pool), 1.0 / len(self.pool))
        weighted = [int(self.pool[k]) for k in rng.choice(len(self.pool), size=n_w, p=prob)] if n_w else []
        uniform = [int(self.pool[k]) for k in self._cycle(self.prompts_per_step - n_w)]
        return weighted + uniform

    def _cycle(self, n: int) -> list[int]:
        """The next ``n`` positions of the seeded pool permutation (a new permutation each pass)."""
        out: list[int] = []
        size = len(self.pool)
        while len(out) < n:
            if self._cursor >= size:
                self._epoch, self._cursor = self._epoch + 1, 0
            order = np.random.default_rng([self.seed, 37, self._epoch]).permutation(size)
            take = min(n - len(out), size - self._cursor)
            out.extend(order[self._cursor : self._cursor + take].tolist())
            self._cursor += take
        return out

    def pop_metrics(self) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "weights": None if self.weights is None else self.weights.tolist(),
            "pass_rate": [None if math.isnan(v) else float(v) for v in self.pass_rate],
            "last_rescore": self.last_rescore,
            "draws": self.draws,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.weights = None if state["weights"] is None else np.asarray(state["weights"], dtype=float)
        self.pass_rate = np.asarray([np.nan if v is None else v for v in state["pass_rate"]], dtype=float)
        self.last_rescore = int(state["last_rescore"])
        self.draws = int(state["draws"])


# ---- task filtering by a baseline pass (ARPO) ----
@dataclass(frozen=True)
class TaskFilterConfig(UniformConfig):
    """Task filtering by the starting policy's outcomes: train only on prompts it sometimes solves.

    Paper: "ARPO: End-to-End Policy Optimization for GUI Agents with Experience Replay",
    https://arxiv.org/abs/2505.16282 ("task filtering": training tasks are selected by the baseline
    agent's success, keeping those with informative outcomes). RECONSTRUCTED: before the first draw
    the starting policy samples ``rescore_samples`` answers to each prompt of a seeded ``pool``
    (0: every training prompt); a prompt is kept when its pass rate is > 0 and, unless
    ``keep_solved``, < 1 (the thresholds and rollout count are UNVERIFIED). Kept prompts are then
    drawn as ``uniform`` draws (seeded epochs). If none is kept, the whole pool is used (logged as
    ``sampler/filter_fallback``).
    """

    rescore_samples: int = 8
    """Samples per prompt of the baseline pass."""
    pool: int = 128
    """Prompts the baseline pass scores (a seeded subset); 0: every training prompt."""
    keep_solved: bool = False
    """Keep prompts the baseline always solves."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rescore_samples < 1 or self.pool < 0:
            raise ValueError(f"need rescore_samples >= 1 and pool >= 0, got {self.rescore_samples}, {self.pool}")


@SAMPLERS.register("task_filter", config=TaskFilterConfig)
class TaskFilterSampler(UniformSampler):
    """ARPO's baseline task filter (see :class:`TaskFilterConfig`).

    Args:
        cfg: the sampler config.
        num_prompts: size of the prompt dataset.
        prompts_per_step: B, prompts per draw.
        seed: seed of the pool and the epochs.
    """

    cfg: TaskFilterConfig

    def __init__(self, cfg: TaskFilterConfig, num_prompts: int, prompts_per_step: int, seed: int):
        super().__init__(cfg, num_prompts, prompts_per_step, seed)
        size = num_prompts if cfg.pool == 0 else min(cfg.pool, num_prompts)
        rng = np.random.default_rng([seed, 43])
        self.pool = np.sort(rng.permutation(num_prompts)[:size]) if size < num_prompts else np.arange(num_prompts)
        self.kept: list[int] | None = None  # None until the baseline pass
        self._metrics: dict[str, float] = {}

    def rescore_prompts(self, step: int) -> tuple[list[int], int]:
        """The pool, once, before the first draw."""
        return (self.pool.tolist(), self.cfg.rescore_samples) if self.kept is None else ([], 0)

    def rescore(self, batch: RolloutBatch) -> None:
        passed = per_prompt_pass(batch, skip_guided=False)
        kept = []
        for i in self.pool.tolist():
            k, n = passed.get(int(i), (0, 0))
            if n and k > 0 and (self.cfg.keep_solved or k < n):
                kept.append(int(i))
        fallback = not kept
        self.kept = kept if kept else self.pool.tolist()
        self._epoch, self._cursor = 0, 0
        self._metrics = {"filter_kept": float(len(kept)), "filter_fallback": float(fallback)}

    def next_prompts(self, step: int) -> list[int]:
        """Seeded epochs over the kept prompts (the pool before the baseline pass)."""
        kept = self.kept if self.kept is not None else self.pool.tolist()
        out: list[int] = []
        while len(out) < self.prompts_per_step:
            if self._cursor >= len(kept):
                self._epoch, self._cursor = self._epoch + 1, 0
            order = np.random.default_rng([self.seed, 47, self._epoch]).permutation(len(kept))
            take = min(self.prompts_per_step - len(out), len(kept) - self._cursor)
            out.extend(int(kept[k]) for k in order[self._cursor : self._cursor + take])
            self._cursor += take
        return out

    def pop_metrics(self) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kept = None if state["kept"] is None else [int(i) for i in state["kept"]]


# ---- value-based sampling (VSPO) ----
@dataclass(frozen=True)
class ValueSamplingConfig(UniformConfig):
    """VSPO's value-based sampling: zero-advantage groups are replaced by prompts of high task value.

    Paper: "VSPO / PRS: Progressive Reward Shaping and Value-based Sampling Policy Optimization",
    https://arxiv.org/abs/2512.07478. RECONSTRUCTED from the abstract only (no code found): groups
    whose rewards are all equal (zero advantage) are dropped, and the step is refilled with prompts
    chosen by a task value "balancing difficulty and uncertainty". Ours (UNVERIFIED): the first draw of
    a step follows the uniform order; a group is kept when its correctness values differ (DAPO's test);
    refill draws sample prompts not yet drawn this step with probability proportional to
    ``v = lam (1 - p) + (1 - lam) 4 p (1 - p)``, ``p`` the prompt's EMA pass rate (``prior`` before it
    is seen): hard prompts (difficulty) and prompts near p = 0.5 (uncertainty) are worth more; when
    fewer than B prompts of positive value remain undrawn, the refill takes the uniform order. The
    paper's value-smoothing clipping is not reproduced (its formula is not in the abstract).
    """

    max_draws: int = 3
    """Draws the loop may make to fill a step with non-zero-advantage groups."""
    lam: float = 0.5
    """Weight of difficulty (1 - p) against uncertainty 4 p (1 - p) in the value."""
    prior: float = 0.5
    """Pass rate assumed for a prompt never drawn."""
    ema_rate: float = 0.5
    """EMA rate of the per-prompt pass rate."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.prior <= 1.0:
            raise ValueError(f"lam and prior must be in [0, 1], got {self.lam}, {self.prior}")


def task_value(pass_rate: np.ndarray, lam: float) -> np.ndarray:
    """``lam (1 - p) + (1 - lam) 4 p (1 - p)`` per prompt."""
    return lam * (1.0 - pass_rate) + (1.0 - lam) * 4.0 * pass_rate * (1.0 - pass_rate)


@SAMPLERS.register("value_sampling", config=ValueSamplingConfig)
class ValueSampler(UniformSampler):
    """VSPO's refills by task value (see :class:`ValueSamplingConfig`).

    Args:
        cfg: the sampler config.
        num_prompts: size of the prompt dataset.
        prompts_per_step: B, prompts per draw.
        seed: seed of the shuffles and draws.
    """

    cfg: ValueSamplingConfig

    def __init__(self, cfg: ValueSamplingConfig, num_prompts: int, prompts_per_step: int, seed: int):
        super().__init__(cfg, num_prompts, prompts_per_step, seed)
        self.stats = PromptStats(num_prompts, ema_rate=cfg.ema_rate)
        self.step, self.draw_in_step, self.draws = -1, 0, 0
        self.drawn: list[int] = []  # prompts drawn in the current step
        self._metrics: dict[str, float] = {"refill_draws": 0.0, "dropped_groups": 0.0}

    def values(self) -> np.ndarray:
        p = np.where(np.isnan(self.stats.ema), self.cfg.prior, self.stats.ema)
        return task_value(p, self.cfg.lam)

    def next_prompts(self, step: int) -> list[int]:
        """The uniform order for a step's first draw; refills by task value, without repeats in the step."""
        if step != self.step:
            self.step, self.draw_in_step, self.drawn = step, 0, []
        self.draw_in_step += 1
        if self.draw_in_step == 1:
            out = super().next_prompts(step)
        else:
            rng = np.random.default_rng([self.seed, 61, self.draws])
            v = self.values()
            v[self.drawn] = 0.0
            pool = np.flatnonzero(v > 0)
            if len(pool) < self.prompts_per_step:
                out = super().next_prompts(step)
            else:
                out = [
                    int(i)
                    for i in rng.choice(pool, size=self.prompts_per_step, replace=False, p=v[pool] / v[pool].sum())
                ]
            self._metrics["refill_draws"] += 1
        self.draws += 1
        self.drawn.extend(out)
        return out

    def observe(self, batch: RolloutBatch) -> None:
        self.stats.update(batch, self.step)

    def keep(self, batch: RolloutBatch) -> torch.Tensor:
        """[N] bool: groups whose correctness values are not all equal (non-zero advantage)."""
        c = torch.tensor(correctness(batch), dtype=torch.float32)
        spread = group_reduce(c, batch.group_ids, "amax") > group_reduce(c, batch.group_ids, "amin")
        self._metrics["dropped_groups"] += float(
            batch.group_ids.unique().numel() - batch.group_ids[spread].unique().numel()
        )
        return spread

    def pop_metrics(self) -> dict[str, float]:
        out, self._metrics = self._metrics, {"refill_draws": 0.0, "dropped_groups": 0.0}
        return out | {"value_mean": float(self.values().mean())}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "stats": self.stats.state_dict(),
            "step": self.step,
            "draw_in_step": self.draw_in_step,
            "draws": self.draws,
            "drawn": list(self.drawn),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.stats.load_state_dict(state["stats"])
        self.step, self.draw_in_step, self.draws = int(state["step"]), int(state["draw_in_step"]), int(state["draws"])
        self.drawn = [int(i) for i in state["drawn"]]
