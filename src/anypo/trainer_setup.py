"""Pieces of a training run that are scaffold, not algorithm: data preparation, schedules, progress, export, report."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from anypo.runs import read_jsonl

log = logging.getLogger(__name__)


def tokenize_prompts(examples, tokenizer, max_prompt_tokens: int) -> tuple[list, list[list[int]], int]:
    """Chat-templated token ids of each example; prompts over the limit are skipped and counted.

    Returns the kept examples, their token ids (aligned) and the number skipped. A prompt is never
    truncated: a cut prompt would train the policy on a question it was not asked.
    """
    from anypo.tasks import format_prompt

    kept, ids, skipped = [], [], 0
    for ex in examples:
        toks = tokenizer(format_prompt(ex, tokenizer), add_special_tokens=False)["input_ids"]
        if len(toks) > max_prompt_tokens:
            skipped += 1
            continue
        kept.append(ex)
        ids.append(list(toks))
    if skipped:
        log.warning("skipped %d prompts longer than max_prompt_tokens=%d (never truncated)", skipped, max_prompt_tokens)
    if not kept and examples:
        raise ValueError(f"every prompt is longer than max_prompt_tokens={max_prompt_tokens}; raise it")
    return kept, ids, skipped


def parse_reward_specs(specs) -> list[tuple[str, float]]:
    """``["math_answer=1", "my.py:fn=0.5", "format"]`` -> ``[(name_or_path, weight), ...]``."""
    out = []
    for spec in specs:
        name, sep, weight = spec.rpartition("=") if "=" in spec else (spec, "", "1")
        try:
            out.append((name if sep else spec, float(weight)))
        except ValueError:
            raise ValueError(
                f"reward spec {spec!r}: the weight after '=' must be a number, e.g. math_answer=1.0"
            ) from None
    return out


def make_reward(task, shaping: tuple = (), specs=()):
    """The task's default reward (or ``specs``) plus the method's reward shaping parts (weight 1 each)."""
    from anypo.rewards import combine

    base = parse_reward_specs(specs) if specs else list(task.default_reward())
    return combine([*base, *((part, 1.0) for part in shaping)])


def make_verifier(task):
    """``verify(example, text) -> 1.0 / 0.0``: the task's first (correctness) reward term alone.

    Returns the function and the component name under which the term appears in the reward.
    """
    from anypo.rewards import combine

    runner = combine([task.default_reward()[0]])
    name = runner.names[0]

    def verify(example, text: str) -> float:
        return runner(example.to_sample(text)).score

    return verify, name


def make_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then constant, linear or cosine decay."""
    total = max(cfg.steps * cfg.algo.ppo_epochs * cfg.algo.minibatches(cfg.prompts_per_step), 1)
    warm = cfg.warmup_steps

    def factor(i: int) -> float:
        if i < warm:
            return (i + 1) / (warm + 1)
        frac = (i - warm) / max(total - warm, 1)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        if cfg.lr_schedule == "linear":
            return max(1.0 - frac, 0.0)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Progress:
    """A rich progress bar with ETA and the latest reward; silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def advance(self, step: int, m: dict[str, float]) -> None:
        if self.bar is None:
            return
        info = f"reward {m.get('reward/mean', float('nan')):.3f}  acc {m.get('reward/accuracy', float('nan')):.3f}"
        if "eval/pass@1" in m:
            info += f"  held-out pass@1 {m['eval/pass@1']:.3f}"
        self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def export_final(model: torch.nn.Module, tokenizer, out: Path) -> None:
    """The final policy as a standard HF directory (LoRA merged) that transformers and vLLM load."""
    from anypo.models import is_lora

    export = model.merge_and_unload() if is_lora(model) else model
    out.mkdir(parents=True, exist_ok=True)
    export.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


PLOTS = {
    "reward": ["reward/mean", "reward/accuracy"],
    "heldout": ["eval/pass@1"],
    "length": ["response/length_mean"],
    "entropy": ["policy/entropy"],
    "kl": ["kl/ref"],
}


def plot_metrics(run_dir: Path) -> list[Path]:
    """One PNG per group of PLOTS with data, against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(run_dir / "metrics.jsonl")
    written = []
    for name, keys in PLOTS.items():
        series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), int | float)] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for k, pts in series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 15 else None, label=k)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = run_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(run_dir: Path, cfg) -> None:
    """run_dir/README.md with the command, the numbers and the plots."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    plots = plot_metrics(run_dir)
    evals = [r for r in rows if "eval/pass@1" in r]
    method = f"Preset `{cfg.preset}`" if cfg.preset else f"Policy loss `{type(cfg.algo.policy_loss).__name__}`"
    lines = [
        f"# {run_dir.name}",
        "",
        f"{method} on task `{cfg.task.name}`, model `{cfg.model.name}`: {cfg.steps} steps of "
        f"{cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples, lr {cfg.lr}.",
        "",
    ]
    if evals:
        lines += ["| step | " + " | ".join(k for k in evals[0] if k.startswith("eval/")) + " |"]
        lines += ["|---" * (1 + sum(k.startswith("eval/") for k in evals[0])) + "|"]
        for r in evals:
            lines += [f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" for k in r if k.startswith("eval/")) + " |"]
        lines.append("")
    train_rows = [r for r in rows if "reward/mean" in r]
    if train_rows:
        last = train_rows[-1]
        secs = sum(r.get("time/step_s", 0.0) for r in train_rows)
        lines += [
            f"Final training reward {last['reward/mean']:.3f}; training wall time {secs:.0f} s "
            f"({secs / len(train_rows):.1f} s per step); peak RSS {last.get('memory/peak_rss_gb', float('nan')):.2f} GB.",
            "",
        ]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    (run_dir / "README.md").write_text("\n".join(lines) + "\n")


class Trackers:
    """TensorBoard / wandb when installed and asked for; otherwise nothing."""

    def __init__(self, cfg, run_dir: Path):
        self.tb = self.wandb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.wandb_project:
            import wandb

            self.wandb = wandb.init(project=cfg.wandb_project, name=run_dir.name, config={"run_dir": str(run_dir)})

    def log(self, step: int, m: dict[str, float]) -> None:
        finite = {k: v for k, v in m.items() if isinstance(v, float | int) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in finite.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(finite, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
