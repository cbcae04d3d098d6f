"""``anypo pairs``: a preference dataset from a policy's own samples, judged by an oracle.

The classic offline setting of DPO and its relatives: sample responses from a policy (by default the
initial policy of the runs that will train on them), let a preference oracle order them, keep one
(chosen, rejected) pair per prompt it separates, and write them as a JSONL preference dataset that
any offline preset reads (``anypo train dpo --data.name pairs.jsonl``). Sampling, judging and pair
selection are the online loop's (:func:`anypo.train_pref_online.pairs_from_samples`), on the same
prompt order as an online run with the same seed, so an offline run on ``N`` prompts and an online
run of ``N / prompts_per_step`` steps see the same prompts and the same number of samples.

Each row is ``{"prompt": [chat messages], "chosen": text, "rejected": text}`` plus what the oracle
said (``pair_prob`` = ``P(y_w > y_l)``, ``gold_chosen``, ``gold_rejected``) and
``generation_tokens``: the tokens sampled for the whole file divided by its pairs, so that a run
trained on ``k`` pairs has cost ``k`` times that in samples (tied and unjudged prompts included; the
offline loop logs it as ``rollout/generated_tokens`` for comparisons at equal samples). A summary of
the run (config, counts, time) is written next to it as ``<out>.meta.json``.

Responses are stored as text, as in any preference dataset; the offline loop re-tokenizes them and
appends the end-of-turn token, so a response that hit ``--sampling.max-new-tokens`` is trained as if
it had ended there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from anypo.engines.base import SamplingConfig
from anypo.errors import UserError
from anypo.models import ModelConfig
from anypo.oracles import OracleConfig
from anypo.tasks.base import TaskConfig

__all__ = ["PairsConfig", "generate_pairs", "pairs_config_problems"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairsConfig:
    """Preference pairs from a policy's own samples, judged by a preference oracle, written as JSONL."""

    out: str = "pairs.jsonl"
    """The JSONL file to write (its summary goes to <out>.meta.json)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy that samples the responses (a trained run's final/ directory works too)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The prompts (a built-in task; its reward is the verifier_bt oracle's)."""
    oracle: OracleConfig = field(default_factory=OracleConfig)
    """The preference oracle that orders the samples."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.9, max_new_tokens=64))
    """How responses are sampled (the online preference loop's default: temperature 0.9, 64 new tokens)."""
    prompts: int = 160
    """Training prompts to sample on: the first N of the task's seeded order (the online loop's order)."""
    samples_per_prompt: int = 2
    """Responses per prompt (pairing `two` needs exactly 2)."""
    pairing: Literal["two", "best_worst"] = "two"
    """two: the oracle's hard label orders the two samples; best_worst: highest vs lowest win rate of K."""
    seed: int = 0
    """Seed of the prompt order and of the sampling."""
    batch_prompts: int = 8
    """Prompts per generation call (memory knob; the sampling seed is per call, so another value draws other samples)."""
    max_prompt_tokens: int = 512
    """Longer templated prompts are skipped and counted."""
    threads: int = 2
    """torch CPU threads."""
    progress: bool = True
    """Show a progress bar."""


def pairs_config_problems(cfg: PairsConfig) -> list[str]:
    """Every problem of ``cfg``, one message each naming the option and the fix (empty when valid)."""
    from anypo.oracles import oracle_config_problems
    from anypo.train_pref_online import oracle_task_problems, pairing_problems
    from anypo.validate import _model_problems, _sampling_problems

    out = []
    for name, low in (("prompts", 1), ("batch_prompts", 1), ("threads", 1), ("max_prompt_tokens", 1)):
        if getattr(cfg, name) < low:
            out.append(f"--{name.replace('_', '-')} is {getattr(cfg, name)}: it must be at least {low}")
    out += pairing_problems(cfg.pairing, cfg.samples_per_prompt, "--", ("two", "best_worst"))
    if cfg.oracle.kind in ("same", "none"):
        out.append(f"--oracle.kind is {cfg.oracle.kind!r}: name the oracle that judges the samples (e.g. verifier_bt)")
    else:
        out += oracle_config_problems(cfg.oracle)
    out += oracle_task_problems({cfg.oracle.kind}, cfg.task.name)
    if not cfg.out.endswith(".jsonl"):
        out.append(f"--out is {cfg.out!r}: the pairs are written as JSONL; give a path ending in .jsonl")
    out += _sampling_problems(cfg.sampling, "sampling")
    out += _model_problems(cfg.model)
    return out


def generate_pairs(cfg: PairsConfig) -> Path:
    """Sample, judge and write the pairs of ``cfg``; returns the JSONL path (atomic: a crash leaves no file)."""
    import torch

    from anypo import models
    from anypo.engines.hf import HFEngine
    from anypo.eval_run import _progress
    from anypo.oracles import make_oracle
    from anypo.tasks import get_task
    from anypo.tasks.base import stable_seed
    from anypo.train_pref import PairOrder
    from anypo.train_pref_online import pairs_from_samples
    from anypo.trainer_setup import tokenize_prompts

    problems = pairs_config_problems(cfg)
    if problems:
        raise UserError(problems)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    tokenizer = models.load_tokenizer(cfg.model.name)
    model = models.load_model(cfg.model, seed=cfg.seed).eval().requires_grad_(False)
    engine = HFEngine(model, tokenizer)
    task = get_task(cfg.task)
    oracle = make_oracle(cfg.oracle, task)
    examples, prompt_ids, skipped = tokenize_prompts(task.train_examples(), tokenizer, cfg.max_prompt_tokens)
    if not examples:
        raise UserError(f"task {cfg.task.name!r} has no prompt within --max-prompt-tokens {cfg.max_prompt_tokens}")
    n = min(cfg.prompts, len(examples))
    order = PairOrder(len(examples), cfg.seed, epochs=1).peek(0, n)  # the online loop's first prompts
    rows, totals = [], {"tied": 0.0, "unjudged": 0.0, "tokens": 0.0}
    with _progress(n, cfg.progress, "pairs") as advance:
        for b, start in enumerate(range(0, n, cfg.batch_prompts)):
            idx = order[start : start + cfg.batch_prompts]
            ex, ids = [examples[i] for i in idx], [prompt_ids[i] for i in idx]
            with torch.no_grad():
                gen = engine.generate(ids, cfg.samples_per_prompt, cfg.sampling, stable_seed("pairs", cfg.seed, b))
            tp, m, probs, golds = pairs_from_samples(tokenizer, oracle, ex, ids, [(gen, 0.0)], cfg.pairing)
            totals["tied"] += m["data/tied_prompts"]
            totals["unjudged"] += m["data/unjudged_prompts"]
            totals["tokens"] += m["rollout/generated_tokens"]
            for pair, p, (gc, gr) in zip(tp.texts, probs, golds, strict=True):
                row = {"prompt": pair.messages(), "chosen": pair.chosen, "rejected": pair.rejected, "pair_prob": p}
                row.update({k: v for k, v in (("gold_chosen", gc), ("gold_rejected", gr)) if not math.isnan(v)})
                rows.append(row)
            advance(len(idx))
    if not rows:
        raise UserError(
            f"the {cfg.oracle.kind} oracle separated none of the {n} prompts' samples (all tied or unjudged): "
            "sample more per prompt (--samples-per-prompt with --pairing best_worst) or use a soft oracle"
        )
    share = totals["tokens"] / len(rows)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps({**row, "generation_tokens": share}) + "\n")
    seconds = time.perf_counter() - t0
    meta = {
        "config": asdict(cfg),
        "prompts": n,
        "pairs": len(rows),
        "tied_prompts": int(totals["tied"]),
        "unjudged_prompts": int(totals["unjudged"]),
        "skipped_long_prompts": skipped,
        "generated_tokens": int(totals["tokens"]),
        "generation_tokens_per_pair": share,
        "seconds": seconds,
    }
    meta_path = out.with_name(out.name + ".meta.json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out)
    log.info("%d pairs from %d prompts (%d tied, %d unjudged) in %.1f s", len(rows), n, meta["tied_prompts"],
             meta["unjudged_prompts"], seconds)  # fmt: skip
    return out
