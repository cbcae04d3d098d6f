"""``anypo eval``: pass@k of a model on a task's held-out split, written to a run directory."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from anypo import models
from anypo.config import EvalConfig
from anypo.engines.hf import HFEngine
from anypo.evaluate import default_ks, evaluate, mean_pass_at_k, pass_at_k_by_difficulty
from anypo.runs import JsonlWriter, new_run_dir, write_json_atomic
from anypo.trainer_setup import tokenize_prompts


def run_eval(cfg: EvalConfig) -> Path:
    """Evaluate, write ``config.json``, ``metrics.jsonl``, ``samples.jsonl`` and ``README.md``; return the run dir."""
    from anypo.tasks import get_task
    from anypo.trainer_setup import make_verifier

    torch.set_num_threads(cfg.threads)
    run_dir = new_run_dir(cfg.out_dir, cfg.name)
    write_json_atomic(run_dir / "config.json", cfg)
    t0 = time.perf_counter()
    tokenizer = models.load_tokenizer(cfg.model.name)
    model = models.load_model(cfg.model, seed=cfg.seed).eval()
    t_load = time.perf_counter() - t0
    task = get_task(cfg.task)
    verify, _ = make_verifier(task)
    examples = task.heldout_examples()[: cfg.num_prompts]
    examples, ids, _ = tokenize_prompts(examples, tokenizer, max_prompt_tokens=10**9)
    engine = HFEngine(model, tokenizer)

    def score(i: int, text: str, n_tok: int, truncated: bool) -> float:
        return verify(examples[i], text)

    t1 = time.perf_counter()
    with _progress(len(ids), cfg.progress) as advance:
        rewards, texts = evaluate(
            engine, tokenizer, ids, score, cfg.samples, cfg.sampling, cfg.batch_prompts, cfg.seed, advance
        )
    t_eval = time.perf_counter() - t1
    correct = [[r >= 1.0 for r in row] for row in rewards]
    ks = default_ks(cfg.samples)
    result = {f"eval/pass@{k}": v for k, v in mean_pass_at_k(correct, ks).items()}
    by_level = pass_at_k_by_difficulty(correct, [ex.meta.get("difficulty") for ex in examples], ks)
    result.update(by_level)
    result.update({"eval/prompts": len(ids), "eval/samples": cfg.samples, "time/load_s": t_load, "time/eval_s": t_eval})
    w = JsonlWriter(run_dir / "metrics.jsonl")
    w.write({"step": 0, **result})
    w.close()
    s = JsonlWriter(run_dir / "samples.jsonl")
    for ex, row_t, row_r in zip(examples, texts, rewards, strict=True):
        for text, r in zip(row_t, row_r, strict=True):
            s.write({"prompt": ex.prompt, "answer": ex.answer, "completion": text, "reward": r})
    s.close()
    lines = [
        f"# {run_dir.name}",
        "",
        f"`{cfg.model.name}` on the held-out split of `{cfg.task.name}`: {len(ids)} prompts x {cfg.samples} samples "
        f"(temperature {cfg.sampling.temperature}, at most {cfg.sampling.max_new_tokens} new tokens).",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| pass@{k} | {result[f'eval/pass@{k}']:.3f} |" for k in ks],
        *[f"| {key[5:].replace('/', ', ')} | {v:.3f} |" for key, v in by_level.items() if key.startswith("eval/pass@")],
        "",
        f"Model load {t_load:.1f} s, evaluation {t_eval:.1f} s.",
    ]
    (run_dir / "README.md").write_text("\n".join(lines) + "\n")
    return run_dir


class _progress:
    """A rich progress bar over prompts, as a context manager yielding ``advance(n)``."""

    def __init__(self, total: int, enabled: bool, label: str = "eval"):
        self.total, self.enabled, self.label = total, enabled, label

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        self.bar.start()
        task = self.bar.add_task("eval", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
