"""The run scaffold every loop shares: run directory, resolved config, checkpoints with exact resume,
metrics and samples logs, budgets, progress bar, trackers, evaluation schedule, Ctrl-C and fault
handling, final export, plots and the run README.

A loop file (``train.py`` for online RL; later the preference, self-play and classic loops) holds
only its algorithm, as an object with the methods of :class:`Loop`, and hands it to
:func:`run_loop`::

    def train(cfg, resume=None):
        return run_loop(cfg, Context.build, resume)

The scaffold reads these fields of the loop's config (every loop config has them): ``name``,
``out_dir``, ``seed``, ``threads``, ``steps``, ``eval_every``, ``save_every``, ``keep_checkpoints``,
``max_bad_updates``, ``progress``, ``tensorboard``, ``wandb_project``, ``budget_tokens``,
``budget_seconds``. It reads these metrics of a step, when the loop logs them:
``budget/tokens`` or else ``rollout/generated_tokens`` (the tokens counted against
``budget_tokens``: an offline loop counts the tokens it trains on), ``time/step_s`` (the time
budget) and ``train/skipped_updates`` (non-finite updates in a row stop the run).

Optional loop members: ``done()`` (True once the loop has nothing left to train on, e.g. the last
epoch of a dataset: the run ends after that step, evaluated and saved as a last step) and
``progress_keys`` (``(label, metric)`` pairs the progress bar shows; default reward and accuracy).

Resume guarantee: a checkpoint holds the loop's weights and optimizer state as of the end of a
step, and the loop's cheap per-step state (sampler, counters), the RNGs and the budget counters as
they were when that step ended, even when the checkpoint is written later (Ctrl-C during the next
step's rollout, after the sampler has already drawn). A resumed run then repeats exactly what the
uninterrupted one would have done (``tests/e2e/test_resume_faults.py``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from anypo import checkpoint
from anypo.runs import JsonlWriter, new_run_dir, read_jsonl, truncate_jsonl, write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["Loop", "Progress", "Trackers", "TrainingError", "plot_metrics", "run_loop", "write_report"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite updates in a row)."""


class Loop(Protocol):
    """A loop's algorithm, as the scaffold drives it.

    Attributes:
        mid_update: True from the moment the loop starts changing its weights in a step until the
            scaffold has logged that step (the scaffold resets it). A Ctrl-C then keeps the last
            checkpoint instead of saving half-updated weights.
    """

    mid_update: bool

    def train_step(self, step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Run step ``step``; return its metrics and the sample records to log (may be empty)."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics with the current weights (``eval/...`` keys)."""
        ...

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Named groups of tensors to save (e.g. ``{"policy": ..., "critic": ...}``)."""
        ...

    def checkpoint_state(self) -> dict[str, Any]:
        """State that only changes while ``mid_update`` (optimizer, LR schedule)."""
        ...

    def step_state(self) -> dict[str, Any]:
        """Cheap state that changes outside the update (sampler position, per-prompt history);
        snapshotted when a step completes."""
        ...

    def load_checkpoint(self, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
        """Restore from what ``checkpoint_tensors`` / ``checkpoint_state`` / ``step_state`` saved."""
        ...

    def describe(self) -> str:
        """One sentence for the run README: the method, task, model and batch shape."""
        ...

    def export(self, out: Path) -> None:
        """Write the final model to ``out`` (a standard Hugging Face directory)."""
        ...

    def close(self) -> None:
        """Release what the loop holds (temporary files, engines)."""
        ...


def run_loop(cfg: Any, build: Callable[[Any, Path], Loop], resume: str | Path | None = None) -> Path:
    """Run the loop ``build(cfg, run_dir)`` in a new run directory (or continue ``resume``).

    Returns the run directory. A KeyboardInterrupt saves the last finished step (when it is newer
    than the last checkpoint) and re-raises; a :class:`TrainingError` leaves the last good
    checkpoint in place.
    """
    torch.set_num_threads(cfg.threads)
    run_dir = Path(resume) if resume else new_run_dir(cfg.out_dir, cfg.name)
    if not resume:
        write_json_atomic(run_dir / "config.json", cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    loop = build(cfg, run_dir)
    run = _Run(cfg, run_dir, loop)
    start = run.restore() if resume else 0
    metrics_log = JsonlWriter(run_dir / "metrics.jsonl")
    samples_log = JsonlWriter(run_dir / "samples.jsonl")
    ui = Progress(cfg.steps, start, enabled=cfg.progress, keys=getattr(loop, "progress_keys", None))
    trackers = Trackers(cfg, run_dir)
    try:
        if start == 0 and cfg.eval_every > 0 and getattr(cfg, "eval_at_start", True):
            metrics_log.write({"step": 0, **loop.evaluate()})
        run.steps(start, metrics_log, samples_log, ui, trackers)
    except KeyboardInterrupt:
        # Keep what was trained, but only a consistent state: the end of a fully logged step.
        # Interrupted inside an update, the weights are half-way and the last checkpoint stands.
        if not loop.mid_update and run.clean_step > run.saved_step:
            run.save(run.clean_step)
        print(f"\ninterrupted; resume from {checkpoint.latest(run_dir)} with: anypo train --resume {run_dir}")
        raise
    finally:
        ui.close()
        metrics_log.close()
        samples_log.close()
    loop.export(run_dir / "final")
    write_report(run_dir, loop.describe())
    trackers.close()
    loop.close()
    return run_dir


class _Run:
    """The scaffold's bookkeeping for one run: budget counters, the step-end snapshot, checkpoints."""

    def __init__(self, cfg: Any, run_dir: Path, loop: Loop):
        self.cfg, self.run_dir, self.loop = cfg, run_dir, loop
        self.tokens_total = 0  # response tokens generated so far (the loop's rollout/generated_tokens)
        self.train_seconds = 0.0  # training wall time so far (time/step_s; evaluations excluded)
        self.clean_step = 0  # last step whose update and logs are complete
        self.saved_step = 0
        self._snapshot = self._step_state()

    def _step_state(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                **self.loop.step_state(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                "budget": {"tokens_total": self.tokens_total, "train_seconds": self.train_seconds},
            }
        )

    def loop_done(self) -> bool:
        """True once the loop says it has nothing left to train on (its optional ``done()``)."""
        done = getattr(self.loop, "done", None)
        return bool(done()) if done is not None else False

    def budget_reached(self) -> bool:
        """True once the run's token or wall-time budget is spent (``steps`` bounds it regardless)."""
        cfg = self.cfg
        return (cfg.budget_tokens > 0 and self.tokens_total >= cfg.budget_tokens) or (
            cfg.budget_seconds > 0 and self.train_seconds >= cfg.budget_seconds
        )

    def steps(self, start: int, metrics_log, samples_log, ui, trackers) -> None:
        """Steps ``start + 1 .. cfg.steps``, or until the budget is spent."""
        cfg, loop = self.cfg, self.loop
        bad_in_a_row = 0
        for step in range(start + 1, cfg.steps + 1):
            if self.budget_reached() or self.loop_done():  # a resumed run that had already finished
                break
            m, samples = loop.train_step(step)
            token_key = "budget/tokens" if "budget/tokens" in m else "rollout/generated_tokens"
            self.tokens_total += int(m.get(token_key, 0))
            self.train_seconds += float(m.get("time/step_s", 0.0))
            if token_key in m:
                m[token_key + "_total"] = float(self.tokens_total)
            last = step == cfg.steps or self.budget_reached() or self.loop_done()
            bad_in_a_row = bad_in_a_row + 1 if m.get("train/skipped_updates", 0) > 0 else 0
            if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or last):
                m.update(loop.evaluate())
            metrics_log.write({"step": step, **m})
            for record in samples:
                samples_log.write({"step": step, **record})
            trackers.log(step, m)
            self.clean_step = step
            loop.mid_update = False
            self._snapshot = self._step_state()
            if step % cfg.save_every == 0 or last:
                self.save(step)
            ui.advance(step, m)
            if bad_in_a_row >= cfg.max_bad_updates:
                raise TrainingError(
                    f"{bad_in_a_row} updates in a row had a non-finite loss or gradient; stopped at step {step}. "
                    f"The last good checkpoint is {checkpoint.latest(self.run_dir)}. Lower the learning rate "
                    f"or check the reward."
                )
            if last:
                break

    def save(self, step: int) -> None:
        """Checkpoint the end of ``step``: the loop's tensors and state, with the step-end snapshot."""
        state = {"step": step, **self.loop.checkpoint_state(), **self._snapshot}
        checkpoint.save(self.run_dir, step, self.loop.checkpoint_tensors(), state, keep=self.cfg.keep_checkpoints)
        self.saved_step = step

    def restore(self) -> int:
        """Load the latest checkpoint of the run; metrics logged after it are dropped (they are redone)."""
        ckpt = checkpoint.latest(self.run_dir)
        if ckpt is None:
            raise checkpoint.CheckpointError(
                f"{self.run_dir} has no checkpoint to resume from (checkpoints/latest is missing)"
            )
        tensors, state = checkpoint.load(ckpt)
        self.loop.load_checkpoint(tensors, state)
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        budget = state.get("budget", {})
        self.tokens_total = int(budget.get("tokens_total", 0))
        self.train_seconds = float(budget.get("train_seconds", 0.0))
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_jsonl(self.run_dir / name, state["step"])
        self.clean_step = self.saved_step = int(state["step"])
        self._snapshot = self._step_state()
        return self.saved_step


class Progress:
    """A rich progress bar with ETA and the latest values of ``keys`` (``(label, metric)`` pairs;
    default: reward and accuracy); silent when disabled."""

    DEFAULT_KEYS = (("reward", "reward/mean"), ("acc", "reward/accuracy"))

    def __init__(self, total: int, start: int, enabled: bool = True, keys=None):
        self.bar = None
        self.keys = tuple(keys) if keys else self.DEFAULT_KEYS
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
        info = "  ".join(f"{label} {m.get(key, float('nan')):.3f}" for label, key in self.keys)
        if "eval/pass@1" in m:
            info += f"  held-out pass@1 {m['eval/pass@1']:.3f}"
        self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Trackers:
    """TensorBoard / wandb when installed and asked for; otherwise nothing."""

    def __init__(self, cfg: Any, run_dir: Path):
        self.tb = self.wandb = None
        if getattr(cfg, "tensorboard", False):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if getattr(cfg, "wandb_project", None):
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


PLOTS = {
    "reward": ["reward/mean", "reward/accuracy"],
    "heldout": ["eval/pass@1"],
    "length": ["response/length_mean"],
    "entropy": ["policy/entropy"],
    "kl": ["kl/ref"],
    "preference": ["pref/loss", "eval/loss"],
    "pref_rewards": ["pref/reward_margin", "pref/accuracy", "eval/accuracy"],
    "logratio": ["kl/logratio_chosen", "kl/logratio_rejected"],
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


def write_report(run_dir: Path, headline: str) -> None:
    """run_dir/README.md with the headline, the held-out numbers, the training summary and the plots."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    plots = plot_metrics(run_dir)
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    lines = [f"# {run_dir.name}", "", headline, ""]
    if evals:
        keys = [k for k in evals[0] if k.startswith("eval/")]
        lines += ["| step | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|"]
        for r in evals:
            lines += [f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" for k in keys if k in r) + " |"]
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
    elif loss_rows := [r for r in rows if "loss/total" in r]:  # a loop without rewards (offline preference)
        last = loss_rows[-1]
        secs = sum(r.get("time/step_s", 0.0) for r in loss_rows)
        lines += [
            f"Final training loss {last['loss/total']:.4f}; training wall time {secs:.0f} s "
            f"({secs / len(loss_rows):.1f} s per step); peak RSS {last.get('memory/peak_rss_gb', float('nan')):.2f} GB.",
            "",
        ]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    (run_dir / "README.md").write_text("\n".join(lines) + "\n")
