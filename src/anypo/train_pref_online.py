"""The online / iterative preference loop: the policy's own samples, judged by an oracle, become pairs.

Each step takes the next ``prompts_per_step`` prompts of a task, samples responses, asks the
preference oracle (``anypo.oracles``: Bradley-Terry on the task's verifier, or the intransitive
majority oracle) which is better, turns each prompt's samples into one (chosen, rejected) pair, fills
the pair's reference column, and takes one optimizer step with the preset's registered
``preference_loss``. The update itself (micro-batches, global normalisation, clipping, non-finite
skips) is the offline loop's (:meth:`anypo.train_pref.PrefLoop.update`); the run directory,
checkpoints with exact resume, logs, budgets and Ctrl-C are the shared scaffold's (``anypo.run``).
This file holds only what differs: where pairs come from, and which reference they are measured
against.

**Pairs** (``OnlinePrefAlgoConfig.pairing``), per prompt:

* ``two``: two samples of the policy; the oracle's preferred one is chosen (online DPO).
* ``best_worst``: ``K`` samples; the oracle's ``K x K`` matrix ``P`` (``P_ii = 1/2``) gives each
  sample's win rate ``w_k = (1/K) sum_j P_kj`` (SPPO's ``compute_prob.py`` convention, self
  included); chosen = argmax, rejected = argmin (iterative DPO, SPPO, INPO, APO).
* ``policy_vs_reference``: one sample of the policy and one of the initial (reference) policy (XPO).

A tie (``P = 1/2``, or all win rates equal) gives no pair (``data/tied_prompts``); a pair the oracle
could not judge is dropped and counted (``data/unjudged_pairs``; ``best_worst`` drops the unjudged
samples and keeps the prompt if two remain). Every pair carries the oracle's numbers as extras for the
loss: ``winrate_chosen``, ``winrate_rejected``, ``pair_prob`` = ``P(y_w > y_l)``, and
``ref_sample_chosen`` / ``ref_sample_rejected`` (1.0 on the side sampled from the reference).

**Samples** come from the current policy (``sample_from="policy"``: online) or from the frozen
iterate ``pi_t`` of the current iteration (``"iterate"``: the batch-iterative methods, whose data of
iteration t is sampled from ``pi_t``).

**Reference.** The reference column is a log-linear mix of frozen snapshots, per token:
``log pi_ref = w_0 log pi_1 + w_1 log pi_t + w_2 log pi_{t-1}`` (``ref_initial``, ``ref_previous``,
``ref_before``; weights sum to 1), where ``pi_1`` is the initial policy and an iteration lasts
``steps_per_iteration`` steps; at the start of each new iteration ``pi_{t-1} <- pi_t`` and
``pi_t <-`` the current weights. DPO with a fixed reference is ``(1, 0, 0)``; SPPO and iterative DPO
against the previous iterate ``(0, 1, 0)``; INPO's ``(eta tau, 1 - eta tau, 0)``; APO's Nesterov
extrapolation ``(0, 1 + alpha, -alpha)``. Snapshots are frozen copies held in memory (and saved in
checkpoints when they differ from the initial weights); the reference log-probs are computed once per
step for that step's pairs, under ``torch.no_grad``.

**Evaluation** (by ``eval_oracle``; kind ``same``, the default: the training oracle) on the task's held-out prompts (fixed samples of the initial policy cached at the
first evaluation): ``eval/win_rate_vs_init`` (the oracle's mean ``P(y_policy > y_initial)``, ties
1/2), ``eval/gold`` (the oracle's gold score of the policy's samples; ``eval/gold_init`` the initial
policy's), ``eval/proxy`` (with an evaluation oracle other than the training one: the training oracle's gold score
of the same samples, for over-optimisation plots), ``eval/kl_ref`` (``mean sum_t log pi(y_t) - log pi_1(y_t)`` over the policy's samples: the
k1 estimate of ``KL(pi || pi_1)`` at ``eval_sampling.temperature = 1``), and on a fixed finite
candidate set per prompt (``eval_candidates`` samples of the initial policy) the exact Nash
equilibrium of the oracle's preference game (``anypo.oracles.nash``) and the policy restricted to the
candidates, ``q(y) ~ pi(y|x)``: ``eval/exploitability`` = ``max_y P(y > q) - 1/2`` and
``eval/nash_tv`` (total variation between ``q`` and the Nash). The loop never branches on a method's
name: a preset is a choice of these fields and a loss.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from anypo import registry
from anypo.config import RunOptions
from anypo.engines.base import SamplingConfig
from anypo.errors import UserError
from anypo.losses.preference import DPO
from anypo.models import ModelConfig
from anypo.oracles import OracleConfig, hard_label, make_oracle
from anypo.oracles.base import preference_matrices
from anypo.pref_eval import OracleEvaluation, _nanmean, finite_gold
from anypo.run import run_loop
from anypo.runs import peak_rss_gb
from anypo.tasks.base import TaskConfig, stable_seed
from anypo.tasks.preference_data import PreferencePair
from anypo.train_pref import (
    PairOrder,
    PrefLoop,
    TokenPairs,
    _chunks,
    loop_problems,
    loss_problems,
    pair_logprobs,
)
from anypo.types import PartConfig

__all__ = [
    "OnlinePrefAlgoConfig",
    "OnlinePrefLoop",
    "OnlinePrefTrainConfig",
    "check_online_pref_config",
    "mix_reference",
    "online_pref_config_problems",
    "pairs_from_samples",
    "select_pair",
    "train",
]

log = logging.getLogger(__name__)

SNAPSHOTS = ("initial", "previous", "before")
"""The frozen policies a reference can mix: pi_1, pi_t (start of the iteration), pi_{t-1}."""

Pairing = Literal["two", "best_worst", "policy_vs_reference"]
PAIRINGS = ("two", "best_worst", "policy_vs_reference")


@dataclass(frozen=True)
class OnlinePrefAlgoConfig:
    """An online / iterative preference method: how pairs are made and what the reference is.

    A preset of kind ``preference_online`` returns one of these (see the module docstring).
    """

    loss: PartConfig = field(default_factory=DPO)
    """Config of a registered ``preference_loss`` (dpo, ipo, sppo, xpo, ...)."""
    samples_per_prompt: int = 2
    """K: responses sampled per prompt (``two`` needs 2; ``policy_vs_reference`` samples 1 + 1)."""
    pairing: Pairing = "two"
    """two: the oracle orders two samples; best_worst: highest vs lowest win rate of K;
    policy_vs_reference: a policy sample vs a reference-policy sample."""
    sample_from: Literal["policy", "iterate"] = "policy"
    """policy: the current weights (online); iterate: the frozen pi_t of the current iteration."""
    ref_initial: float = 1.0
    """Weight of log pi_1 (the initial policy) in the reference column."""
    ref_previous: float = 0.0
    """Weight of log pi_t (the snapshot at the start of the current iteration)."""
    ref_before: float = 0.0
    """Weight of log pi_{t-1} (the snapshot before that; APO's extrapolation)."""
    steps_per_iteration: int = 0
    """Steps per iteration (the snapshots rotate at each iteration's first step); 0: one iteration."""

    def parts(self) -> tuple[PartConfig, ...]:
        return (self.loss,)

    def needs(self, what: str) -> bool:
        """True when a part declares ``needs_<what>`` (``ref_logprobs``, ...)."""
        return any(getattr(p, f"needs_{what}", False) for p in self.parts())

    def reference_mix(self) -> tuple[tuple[str, float], ...]:
        """``(snapshot, weight)`` of every snapshot with a non-zero weight."""
        ws = (self.ref_initial, self.ref_previous, self.ref_before)
        return tuple((n, w) for n, w in zip(SNAPSHOTS, ws, strict=True) if w != 0.0)


@dataclass(frozen=True)
class OnlinePrefTrainConfig(RunOptions):
    """One online / iterative preference-optimisation experiment. ``anypo train <preset>`` fills
    ``algo`` from a preset of kind ``preference_online``."""

    algo: OnlinePrefAlgoConfig = field(default_factory=OnlinePrefAlgoConfig)
    """The method: pairing, reference and loss (from a preset)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to train; its initial weights are pi_1."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The prompts (a built-in task: its reward is the oracle's verifier)."""
    oracle: OracleConfig = field(default_factory=OracleConfig)
    """The preference oracle that judges the samples."""
    eval_oracle: OracleConfig = field(default_factory=lambda: OracleConfig(kind="same"))
    """The oracle of the evaluation (win rate, gold reward, exploitability); kind `same`: the training
    oracle. E.g. train on a plug-in judge (the proxy) and evaluate with the verifier (the gold):
    `--oracle.kind judge --oracle.judge j.py:fn --eval-oracle.kind verifier_bt`."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.9, max_new_tokens=64))
    """How training responses are sampled (TRL online DPO: temperature 0.9, 64 new tokens)."""
    name: str = "online_dpo"
    """Run name; the run directory is <out_dir>/<name>-<timestamp>."""
    steps: int = 30
    """Optimizer steps (one batch of prompts each)."""
    prompts_per_step: int = 8
    """Prompts per step (at most one pair each)."""
    pack_prompts: bool = True
    """A pair's prompt and both responses run as one packed sequence (the prompt once)."""
    eval_prompts: int = 32
    """Held-out prompts per evaluation (at most task.num_heldout)."""
    eval_candidates: int = 4
    """Samples of the initial policy per held-out prompt forming the finite game of eval/exploitability; 0: none."""
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=64))
    """Sampling of the evaluation responses (temperature 1: eval/kl_ref estimates the KL of the policy itself)."""


def train(cfg: OnlinePrefTrainConfig, resume: str | Path | None = None) -> Path:
    """Run ``cfg`` (or continue the run in ``resume``) and return the run directory."""
    check_online_pref_config(cfg)
    return run_loop(cfg, OnlinePrefLoop.build, resume)


# ---------------------------------------------------------------------------------------------
# Config checks
# ---------------------------------------------------------------------------------------------


def check_online_pref_config(cfg: OnlinePrefTrainConfig) -> None:
    """Validate ``cfg``; raise :class:`~anypo.errors.UserError` listing every problem."""
    problems = online_pref_config_problems(cfg)
    if problems:
        raise UserError(problems)


def online_pref_config_problems(cfg: OnlinePrefTrainConfig) -> list[str]:
    """Every problem of ``cfg``, one message each naming the option and the fix (empty when valid)."""
    from anypo.oracles import oracle_config_problems
    from anypo.validate import _model_problems, _sampling_problems

    algo = cfg.algo
    if not isinstance(algo, OnlinePrefAlgoConfig):
        return [
            f"algo is a {type(algo).__name__}, not the online preference loop's OnlinePrefAlgoConfig: build the "
            "config of the preset's loop (anypo.cli.loop_of(kind))"
        ]
    out = loop_problems(
        cfg,
        (
            ("prompts_per_step", 1, "the prompts per step"),
            ("eval_prompts", 0, "the held-out prompts per evaluation"),
            ("eval_candidates", 0, "the candidates per held-out prompt (0 = no exploitability)"),
            ("algo.steps_per_iteration", 0, "the steps per iteration (0 = one iteration)"),
        ),
    )
    out += loss_problems(algo.loss)
    if algo.needs("revision_logprobs"):
        out.append(
            "algo.loss needs revision-conditioned log-probs (needs_revision_logprobs), which only the offline "
            "preference loop computes: train it on fixed pairs (anypo train srpo)"
        )
    out += pairing_problems(algo.pairing, algo.samples_per_prompt, "--algo.")
    if algo.sample_from not in ("policy", "iterate"):
        out.append(f"--algo.sample-from is {algo.sample_from!r}: use policy or iterate")
    ws = (algo.ref_initial, algo.ref_previous, algo.ref_before)
    if not all(math.isfinite(w) for w in ws) or abs(sum(ws) - 1.0) > 1e-9:
        out.append(
            f"--algo.ref-initial/--algo.ref-previous/--algo.ref-before are {ws}: the reference is a log-linear mix "
            "of snapshots, so the weights must be finite and sum to 1 (e.g. 1 0 0 for a fixed reference)"
        )
    if cfg.eval_every > 0 and cfg.eval_prompts > 0:
        out += _sampling_problems(cfg.eval_sampling, "eval_sampling")
    out += _sampling_problems(cfg.sampling, "sampling")
    if cfg.oracle.kind == "same":
        out.append("--oracle.kind is 'same': only the evaluation oracle can be the training oracle's; name one")
    else:
        out += oracle_config_problems(cfg.oracle)
    if cfg.eval_oracle.kind != "same":
        out += oracle_config_problems(cfg.eval_oracle, "eval-oracle")
    out += oracle_task_problems({cfg.oracle.kind, cfg.eval_oracle.kind}, cfg.task.name)
    out += _model_problems(cfg.model)
    return out


def pairing_problems(pairing: str, samples: int, prefix: str, allowed: tuple[str, ...] = PAIRINGS) -> list[str]:
    """Problems of a pairing and its samples per prompt (options named ``<prefix>pairing`` and
    ``<prefix>samples-per-prompt``)."""
    if pairing not in allowed:
        return [f"{prefix}pairing is {pairing!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}"]
    if pairing == "two" and samples != 2:
        return [f"{prefix}samples-per-prompt is {samples}: pairing 'two' orders exactly 2 samples"]
    if pairing == "best_worst" and samples < 2:
        return [f"{prefix}samples-per-prompt is {samples}: best_worst needs >= 2 samples"]
    return []


def oracle_task_problems(kinds: set[str], task: str, option: str = "--task.name") -> list[str]:
    """The oracles ``kinds`` that judge with a task's verifier need a built-in task (``same`` and
    ``none`` name no oracle; a judge, a reward model and the lexical judges read only the texts)."""
    from anypo.tasks import TASKS

    text_only = {"judge", "reward_model", "vader", "profanity", "same", "none"}
    if kinds <= text_only or task in TASKS:
        return []
    return [
        f"{option} is {task!r}: the {'/'.join(sorted(kinds - text_only))} oracle judges with a built-in task's "
        f"verifier; use one of {', '.join(sorted(TASKS))} (or a judge / reward model / lexical oracle)"
    ]


# ---------------------------------------------------------------------------------------------
# ALGO LOGIC: pairs from a prompt's samples, and the mixed reference
# ---------------------------------------------------------------------------------------------


@dataclass
class Selected:
    """The pair chosen among one prompt's samples, and the oracle's numbers for the loss."""

    chosen: int
    rejected: int
    winrate_chosen: float
    winrate_rejected: float
    pair_prob: float


def select_pair(P: Tensor) -> tuple[Selected | None, str]:
    """The (chosen, rejected) pair of ``K`` samples from their preference matrix ``P [K, K]``.

    Samples with an unjudged (NaN) entry are dropped, the one with the most NaNs first, until none is
    left. Win rates ``w_k = (1/m) sum_j P_kj`` over the ``m`` remaining samples (diagonal 1/2 included,
    SPPO's convention); chosen = the first argmax, rejected = the first argmin. Returns ``(pair,
    "ok")``, or ``(None, "unjudged")`` when fewer than 2 samples remain, or ``(None, "tied")`` when all
    win rates are equal. Indices refer to the rows of ``P``.
    """
    keep = list(range(P.shape[0]))
    while keep:
        sub = P[keep][:, keep]
        nans = torch.isnan(sub).sum(1)
        if int(nans.sum()) == 0:
            break
        keep.pop(int(nans.argmax()))
    if len(keep) < 2:
        return None, "unjudged"
    sub = P[keep][:, keep]
    w = sub.mean(1)
    b, worst = int(w.argmax()), int(w.argmin())
    if float(w[b]) == float(w[worst]):
        return None, "tied"
    return Selected(keep[b], keep[worst], float(w[b]), float(w[worst]), float(sub[b, worst])), "ok"


def mix_reference(columns: list[tuple[float, Tensor]]) -> Tensor:
    """``sum_k w_k lp_k``: the per-token log-probs of the log-linear mix of snapshots (same shape each).

    Summed over a response's tokens this is ``sum_k w_k log pi_k(y|x)``, so the loss's log-ratio is
    ``log pi(y|x) - sum_k w_k log pi_k(y|x)`` (weights summing to 1: the mixture's normaliser cancels
    in every pairwise difference, spec sections 6 and 8).
    """
    out = torch.zeros_like(columns[0][1], dtype=torch.float32)
    for w, lp in columns:
        out = out + w * lp.float()
    return out


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


def _params(model: torch.nn.Module) -> dict[str, Tensor]:
    """Every distinct parameter (tied ones once), detached copies, for a checkpoint."""
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class OnlinePrefLoop(PrefLoop):
    """An online / iterative preference run: the policy, its frozen snapshots, the oracle."""

    progress_keys = (("loss", "pref/loss"), ("gold", "data/gold"))

    @classmethod
    def build(cls, cfg: OnlinePrefTrainConfig, run_dir: Path) -> OnlinePrefLoop:
        from anypo.engines.hf import HFEngine
        from anypo.tasks import get_task
        from anypo.trainer_setup import tokenize_prompts

        self = cls.start(cfg, run_dir)
        self.task = get_task(cfg.task)
        self.examples, self.prompt_ids, self.skipped = tokenize_prompts(
            self.task.train_examples(), self.tokenizer, cfg.max_prompt_tokens
        )
        n_eval = min(cfg.eval_prompts, cfg.task.num_heldout) if cfg.eval_every > 0 else 0
        self.eval_examples, self.eval_ids, _ = tokenize_prompts(
            self.task.heldout_examples(n_eval), self.tokenizer, cfg.max_prompt_tokens
        )
        self.order = PairOrder(len(self.examples), cfg.seed, epochs=10**9)  # prompts repeat in fresh orders
        self.oracle = make_oracle(cfg.oracle, self.task)
        self.eval_oracle = self.oracle if cfg.eval_oracle.kind == "same" else make_oracle(cfg.eval_oracle, self.task)
        self.loss_fn = registry.registry("preference_loss").fn_for(self.algo.loss)
        self.needs_ref = self.algo.needs("ref_logprobs")
        initial = _frozen_copy(self.model)
        self.snaps: dict[str, torch.nn.Module] = dict.fromkeys(SNAPSHOTS, initial)
        self.distinct = dict.fromkeys(SNAPSHOTS, False)  # True where a snapshot is not pi_1 (saved in checkpoints)
        self.engine = HFEngine(self.model, self.tokenizer)
        self._engines: dict[int, Any] = {}
        self.make_optimizer()
        self.oracle_eval = OracleEvaluation(
            model=self.model, initial=initial, policy_engine=self.engine,
            initial_engine=lambda: self._engine_of("initial"), tokenizer=self.tokenizer, pad_id=self.pad_id,
            examples=self.eval_examples, prompt_ids=self.eval_ids, oracle=self.eval_oracle,
            sampling=cfg.eval_sampling, candidates=cfg.eval_candidates, seed=cfg.seed,
            micro_batch_size=cfg.micro_batch_size, pack=cfg.pack_prompts, autocast=self.autocast,
            proxy=None if self.eval_oracle is self.oracle else self.oracle,
        )  # fmt: skip
        return self

    # ---- snapshots ----
    def iteration(self, step: int) -> int:
        """The iteration (0-based) step ``step`` belongs to."""
        S = self.algo.steps_per_iteration
        return 0 if S == 0 else (step - 1) // S

    def _rotate(self, step: int) -> None:
        """At the first step of iteration t >= 1: pi_{t-1} <- pi_t, pi_t <- the current weights."""
        S = self.algo.steps_per_iteration
        if S == 0 or step == 1 or (step - 1) % S != 0:
            return
        if self.algo.ref_before != 0.0:
            self.snaps["before"], self.distinct["before"] = self.snaps["previous"], self.distinct["previous"]
        self.snaps["previous"], self.distinct["previous"] = _frozen_copy(self.model), True
        self._engines.clear()

    def _engine_of(self, name: str):
        from anypo.engines.hf import HFEngine

        snap = self.snaps[name]
        if id(snap) not in self._engines:
            self._engines = {id(snap): HFEngine(snap, self.tokenizer)}
        return self._engines[id(snap)]

    # ---- one step ----
    def train_step(self, step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        t0 = time.perf_counter()
        self._rotate(step)
        idx = self.order.next_pairs(self.cfg.prompts_per_step)
        examples = [self.examples[i] for i in idx]
        prompts = [self.prompt_ids[i] for i in idx]
        tp, m, probs = self.make_pairs(examples, prompts, stable_seed("online-pref", self.cfg.seed, step))
        t = time.perf_counter()
        if len(tp) and self.needs_ref:
            self.reference_columns(tp)
        m["time/reference_s"] = time.perf_counter() - t
        if len(tp):
            upd, per_pair = self.update(tp, list(range(len(tp))))
        else:  # every prompt tied or unjudged: nothing to learn from, not a bad update
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler_step()
            upd, per_pair = {"train/skipped_no_signal": 1.0, "train/optimizer_steps": 0.0}, {}
        m.update(upd)
        step_s = time.perf_counter() - t0
        m.update(
            {
                "data/iteration": float(self.iteration(step)),
                "time/step_s": step_s,
                "memory/peak_rss_gb": peak_rss_gb(),
            }
        )
        samples = []
        for i in range(min(self.cfg.log_samples, len(tp))):
            p = tp.texts[i]
            rec = {"prompt": p.prompt[-1]["content"], "chosen": p.chosen, "rejected": p.rejected, "p": probs[i]}
            rec.update({k: v[i] for k, v in tp.extras.items()})
            rec.update(per_pair.get(i, {}))
            samples.append(rec)
        return m, samples

    def make_pairs(self, examples: list, prompts: list[list[int]], seed: int) -> tuple[TokenPairs, dict, list[float]]:
        """Sample, judge and select: one pair per prompt that the oracle separates."""
        cfg, algo = self.cfg, self.algo
        t = time.perf_counter()
        if algo.pairing == "policy_vs_reference":
            gens = [(self.engine.generate(prompts, 1, cfg.sampling, seed), 0.0)]
            gens.append((self._engine_of("initial").generate(prompts, 1, cfg.sampling, seed + 1), 1.0))
        else:
            eng = self.engine if algo.sample_from == "policy" else self._engine_of("previous")
            gens = [(eng.generate(prompts, algo.samples_per_prompt, cfg.sampling, seed), 0.0)]
        gen_s = time.perf_counter() - t
        tp, m, probs, _ = pairs_from_samples(self.tokenizer, self.oracle, examples, prompts, gens, algo.pairing)
        m["time/generate_s"] = gen_s
        return tp, m, probs

    @torch.no_grad()
    def reference_columns(self, tp: TokenPairs) -> None:
        """Fill ``tp``'s reference column with the mix of snapshots the method names (one pass per
        distinct snapshot; snapshots that are the same weights are summed first)."""
        groups: dict[int, tuple[torch.nn.Module, float]] = {}
        for name, w in self.algo.reference_mix():
            snap = self.snaps[name]
            groups[id(snap)] = (snap, groups.get(id(snap), (snap, 0.0))[1] + w)
        idx = list(range(len(tp)))
        cols: dict[str, list[list[tuple[float, Tensor]]]] = {"c": [[] for _ in idx], "r": [[] for _ in idx]}
        for snap, w in groups.values():
            for chunk in _chunks(idx, self.cfg.micro_batch_size):
                with self.autocast():
                    out_c, out_r, _ = pair_logprobs(snap, tp, chunk, self.pad_id, self.cfg.pack_prompts)
                for row, i in enumerate(chunk):
                    cols["c"][i].append((w, out_c.logprobs[row, : len(tp.chosen[i])]))
                    cols["r"][i].append((w, out_r.logprobs[row, : len(tp.rejected[i])]))
        for i in idx:
            tp.ref_chosen[i] = mix_reference(cols["c"][i])
            tp.ref_rejected[i] = mix_reference(cols["r"][i])

    # ---- evaluation ----
    def evaluate(self) -> dict[str, float]:
        """Win rate against the initial policy, gold reward, KL to pi_1 and exploitability
        (:class:`anypo.pref_eval.OracleEvaluation`)."""
        return self.oracle_eval()

    # ---- what the run scaffold asks of a loop ----
    def done(self) -> bool:
        return False

    def checkpoint_tensors(self) -> dict[str, dict[str, Tensor]]:
        out = super().checkpoint_tensors()
        for name in ("previous", "before"):
            if self.distinct[name]:
                out[f"snapshot_{name}"] = _params(self.snaps[name])
        return out

    def step_state(self) -> dict[str, Any]:
        return {"order": self.order.state_dict(), "snapshots": dict(self.distinct)}

    def load_checkpoint(self, tensors: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> None:
        super().load_checkpoint(tensors, state)
        initial = self.snaps["initial"]
        self.snaps = dict.fromkeys(SNAPSHOTS, initial)
        self.distinct = dict.fromkeys(SNAPSHOTS, False)
        loaded: dict[int, torch.nn.Module] = {}
        for name in ("previous", "before"):
            if state.get("snapshots", {}).get(name):
                snap = _frozen_copy(initial)
                snap.load_state_dict(tensors[f"snapshot_{name}"], strict=False)
                self.snaps[name], self.distinct[name] = snap, True
                loaded[id(snap)] = snap
        self._engines.clear()

    def describe(self) -> str:
        cfg, algo = self.cfg, self.algo
        loss_name = registry.registry("preference_loss").name_of(algo.loss)
        ref = " + ".join(f"{w:g} log pi_{n}" for n, w in algo.reference_mix())
        method = f"Preset `{cfg.preset}`" if cfg.preset else "Online preference optimisation"
        return (
            f"{method} (preference loss `{loss_name}`, pairs `{algo.pairing}` of {algo.samples_per_prompt} samples "
            f"from the {algo.sample_from}, reference {ref}, {algo.steps_per_iteration or cfg.steps} steps per "
            f"iteration) on task `{cfg.task.name}` judged by the `{cfg.oracle.kind}` oracle, model "
            f"`{cfg.model.name}`: {cfg.steps} steps of {cfg.prompts_per_step} prompts, lr {cfg.lr}."
        )


EXTRAS = ("winrate_chosen", "winrate_rejected", "pair_prob", "ref_sample_chosen", "ref_sample_rejected")
"""The per-pair extras every online pair carries (``PreferenceBatch.extras``)."""


def pairs_from_samples(
    tokenizer: Any, oracle: Any, examples: list, prompts: list[list[int]], gens: list, pairing: Pairing
) -> tuple[TokenPairs, dict[str, float], list[float], list[tuple[float, float]]]:
    """Judge sampled responses and select one (chosen, rejected) pair per prompt the oracle separates.

    ``gens``: ``(generation, from_reference)`` tuples, each an engine output for ``prompts`` (its rows
    tagged by ``prompt_index``) and 1.0 when it was sampled from the reference policy (XPO's extras).
    ``pairing`` ``best_worst`` picks by win rate over the oracle's ``K x K`` matrix
    (:func:`select_pair`); ``two`` and ``policy_vs_reference`` take the hard label of ``P[0, 1]``.
    Returns the pairs, the data metrics, each pair's ``P(y_w > y_l)`` and its (chosen, rejected) gold
    scores (NaN where the oracle has none). Shared by the online loop and ``anypo pairs``.
    """
    t = time.perf_counter()
    # per prompt: [(token ids, text, from_ref)]
    per_prompt: list[list[tuple[list[int], str, float]]] = [[] for _ in prompts]
    gen_tokens = 0
    for g, from_ref in gens:
        for row in range(g.response_ids.shape[0]):
            ids = g.response_ids[row][g.response_mask[row].bool()].tolist()
            gen_tokens += len(ids)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            per_prompt[int(g.prompt_index[row])].append((ids, text, from_ref))
    unjudged_before = oracle.num_unjudged
    golds = oracle.gold(
        [ex for ex, s in zip(examples, per_prompt, strict=True) for _ in s], [x[1] for s in per_prompt for x in s]
    )
    tp = TokenPairs([], [], [], [], [], [], extras={k: [] for k in EXTRAS})
    probs, counts = [], {"tied": 0, "unjudged": 0}
    pair_golds: list[tuple[float, float]] = []
    offsets = [0]
    for s in per_prompt:
        offsets.append(offsets[-1] + len(s))
    matrices = preference_matrices(oracle, examples, [[s[1] for s in samples] for samples in per_prompt])
    for b, (ex, samples, P) in enumerate(zip(examples, per_prompt, matrices, strict=True)):
        if pairing == "best_worst":
            sel, why = select_pair(P)
        else:  # two samples: the hard label of P[0, 1]
            label = hard_label(float(P[0, 1]))
            why = "unjudged" if math.isnan(float(P[0, 1])) else "tied" if label is None else "ok"
            sel = None
            if why == "ok":
                sel, _ = select_pair(P)
        if sel is None:
            counts[why] += 1
            continue
        c, r = samples[sel.chosen], samples[sel.rejected]
        tp.prompt.append(prompts[b])
        tp.chosen.append(c[0])
        tp.rejected.append(r[0])
        tp.ref_chosen.append(None)
        tp.ref_rejected.append(None)
        tp.texts.append(PreferencePair(prompt=tuple(ex.messages()), chosen=c[1], rejected=r[1]))
        for k, v in zip(EXTRAS, (sel.winrate_chosen, sel.winrate_rejected, sel.pair_prob, c[2], r[2]), strict=True):
            tp.extras[k].append(float(v))
        probs.append(sel.pair_prob)
        pair_golds.append((float(golds[offsets[b] + sel.chosen]), float(golds[offsets[b] + sel.rejected])))
    judge_s = time.perf_counter() - t
    n_tok = sum(len(tp.chosen[i]) + len(tp.rejected[i]) for i in range(len(tp)))
    m = {
        "data/prompts": float(len(prompts)),
        "data/pairs": float(len(tp)),
        "data/tied_prompts": float(counts["tied"]),
        "data/unjudged_prompts": float(counts["unjudged"]),
        "data/unjudged_pairs": float(oracle.num_unjudged - unjudged_before),
        "data/gold": _nanmean(golds.tolist()),
        "data/gold_chosen": _nanmean([g[0] for g in pair_golds]),
        "data/gold_rejected": _nanmean([g[1] for g in pair_golds]),
        "data/pair_prob": _nanmean(probs),
        "data/response_tokens": float(n_tok),
        "rollout/generated_tokens": float(gen_tokens),
        "time/judge_s": judge_s,
    }
    return tp, finite_gold(m), probs, pair_golds
