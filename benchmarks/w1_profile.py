"""Where anypo's W1 step spends its time and memory (anypo alone; no TRL).

Runs W1 (the workload of ``grpo_vs_trl.py``, see benchmarks/README.md) for ``--warmup`` + ``--steps``
steps through ``Context.step`` and prints, per phase, the median seconds and the highest resident set
size seen during the phase (a thread samples /proc/self/statm every 10 ms), plus the floor each
phase is measured against: the matmul FLOPs it must do at the fp32 matmul rate of this machine
(timed here on the same shapes).

    python benchmarks/w1_profile.py --steps 3
    python benchmarks/w1_profile.py --steps 3 --kl 0.04
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from anypo.validate import ENGINE_PRECISIONS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_vs_trl import W1, w1_train_config  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


class RSSSampler:
    """Highest resident set size (bytes) per labelled phase, sampled by a background thread."""

    def __init__(self, every_s: float = 0.01):
        self.every_s, self.phase, self.peaks = every_s, "setup", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            r = self.rss()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), r)

    @contextmanager
    def label(self, phase: str):
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.peaks[phase] = max(self.peaks.get(phase, 0), self.rss())
            self.phase = previous

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def wrap(obj, name: str, sampler: RSSSampler, phase: str) -> None:
    """Label every call of ``obj.name`` as ``phase`` for the RSS sampler."""
    fn = getattr(obj, name)

    def labelled(*a, **k):
        with sampler.label(phase):
            return fn(*a, **k)

    setattr(obj, name, labelled)


def matmul_rate() -> float:
    """fp32 FLOP/s of this machine on a training-sized matmul ([400, 576] x [576, 1536]), with the
    kernel the model's linears use (``anypo.onednn``)."""
    from anypo import onednn

    a, b = torch.randn(400, 576), torch.randn(1536, 576)
    for _ in range(3):
        onednn.mm_nt(a, b)
    n, t = 50, time.perf_counter()
    for _ in range(n):
        onednn.mm_nt(a, b)
    return n * 2 * 400 * 576 * 1536 / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--kl", type=float, default=0.0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--micro-batch-size", type=int, default=W1["micro_batch_size"])
    ap.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward")
    ap.add_argument("--no-onednn", action="store_true", help="keep PyTorch's default (MKL) float32 linear")
    ap.add_argument("--optimizer", default="adamw", help="the policy's optimizer: adamw, adamw8bit or adafactor")
    ap.add_argument(
        "--engine-precision",
        choices=ENGINE_PRECISIONS,
        default="auto",
        help="the hf engine's decode matmuls (bf16: bfloat16 copies; the loss then takes the old log-probs from its forward)",
    )
    ap.add_argument("--out", default=None, help="write the per-step records here (JSON)")
    args = ap.parse_args()

    from anypo.models import ModelConfig
    from anypo.train import Context

    torch.set_num_threads(W1["threads"])
    sampler = RSSSampler()
    tmp = tempfile.mkdtemp(prefix="w1-profile-")
    cfg = w1_train_config(
        args.kl,
        name="w1-profile",
        steps=args.warmup + args.steps,
        max_new_tokens=W1["max_new_tokens"],
        micro_batch_size=args.micro_batch_size,
        precision=args.precision,
        seed=0,
        out_dir=tmp,
        model=ModelConfig(onednn_linear=not args.no_onednn, gradient_checkpointing=args.gradient_checkpointing),
    )
    cfg = dataclasses.replace(cfg, optimizer=args.optimizer, engine_precision=args.engine_precision)
    torch.manual_seed(cfg.seed)
    with sampler.label("build"):
        ctx = Context.build(cfg, Path(tmp))
    wrap(ctx.engine, "generate", sampler, "generate")
    import anypo.train

    wrap(ctx, "fill_needs", sampler, "prepare")
    wrap(ctx, "update", sampler, "backward")  # the update less its forward passes and optimizer step
    wrap(anypo.train, "response_logprobs", sampler, "forward")
    wrap(ctx.optimizer, "step", sampler, "optimizer")
    # the scheduler notices the wrapper (a timing label, not a change of order) and would warn every step
    warnings.filterwarnings("ignore", message="Seems like `optimizer.step\\(\\)` has been overridden")
    rate = matmul_rate()
    n_body = sum(p.numel() for n, p in ctx.model.named_parameters() if "embed_tokens" not in n)
    n_head = ctx.model.get_output_embeddings().weight.numel()

    records = []
    for step in range(1, args.warmup + args.steps + 1):
        with sampler.label("step"):
            t = time.perf_counter()
            batch, m = ctx.step(step)
            wall = time.perf_counter() - t
        resp = int(batch.response_mask.sum())
        prompts = int(batch.prompt_mask[:: cfg.samples_per_prompt].sum())  # each prompt once (packed)
        # forward + backward = 3x the forward's 2 FLOP per parameter per token
        train_flop = 6 * n_body * (prompts + resp) + 6 * n_head * resp
        rec = {k.removeprefix("time/"): v for k, v in m.items() if k.startswith("time/")}
        rec |= {"step": step, "wall_s": wall, "response_tokens": resp, "train_tflop": train_flop / 1e12}
        rec |= {f"rss_{k}_gb": v / 1e9 for k, v in sampler.peaks.items()}
        records.append(rec)
        print(
            f"step {step}: {wall:.2f} s  "
            + "  ".join(
                f"{k}={rec[k]:.2f}"
                for k in ("generate_s", "prepare_s", "forward_s", "backward_s", "optimizer_s")
                if k in rec
            )
            + f"  tokens={resp}  peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB",
            flush=True,
        )
    sampler.close()
    measured = records[args.warmup :]
    med = {k: statistics.median(r[k] for r in measured) for k in measured[0] if isinstance(measured[0][k], float)}
    print(
        f"\nW1 anypo, KL {args.kl}, {args.precision}, engine {args.engine_precision}, micro-batch "
        f"{args.micro_batch_size}, {args.optimizer}: median of {len(measured)} steps"
    )
    for k in ("generate_s", "prepare_s", "forward_s", "backward_s", "optimizer_s", "step_s", "wall_s"):
        if k in med:
            print(f"  {k:<12} {med[k]:6.2f} s")
    floor = med["train_tflop"] * 1e12 / rate
    print(
        f"  fp32 matmul rate here {rate / 1e9:.0f} GFLOP/s; training matmuls {med['train_tflop']:.2f} TFLOP "
        f"-> floor {floor:.2f} s against forward+backward {med['forward_s'] + med['backward_s']:.2f} s"
    )
    print("  peak RSS by phase (GB): " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sampler.peaks.items()))
    print(f"  process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
