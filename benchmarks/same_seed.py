"""Does one seed give one run? Two checks on the embedded model, each process started fresh.

1. ``--processes N``: N processes each build W1 (``grpo_vs_trl.py``'s workload, anypo's defaults) with
   seed 0 and take two steps; each prints a SHA-256 of every weight after each step and the step's
   response-token count. Process i runs with ``PYTHONHASHSEED=i``, and the last one also with glibc
   allocator settings that change where every large tensor lands (``MALLOC_MMAP_MAX_=0``), so
   neither string hashing nor memory addresses may change a bit.
2. ``--resume``: ``anypo train grpo`` for 4 steps straight, and the same run killed with SIGKILL once
   its step-2 checkpoint is the latest, then ``anypo train --resume``; the metrics of every step and
   the final weights are compared for equality.

    python benchmarks/same_seed.py --processes 6 --resume --engine-precision bf16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anypo.validate import ENGINE_PRECISIONS

HERE = Path(__file__).resolve().parent


def worker(engine_precision: str) -> None:
    """Two W1 steps; one JSON line per step: response tokens and the weights' digest."""
    import torch

    sys.path.insert(0, str(HERE))
    from grpo_vs_trl import W1, w1_context

    torch.set_num_threads(W1["threads"])
    ctx = w1_context("same-seed", 2, engine_precision)
    for step in (1, 2):
        batch, _ = ctx.step(step)
        digest = hashlib.sha256()
        for _, p in sorted(ctx.model.named_parameters()):
            digest.update(p.detach().numpy().tobytes())
        tokens = int(batch.response_mask.sum())
        print(json.dumps({"step": step, "tokens": tokens, "weights": digest.hexdigest()[:16]}), flush=True)


def check_processes(n: int, engine_precision: str) -> bool:
    results = []
    for i in range(n):
        env = {**os.environ, "PYTHONHASHSEED": str(i)}
        if i == n - 1 and n > 1:
            env |= {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(10**11)}
        cmd = [sys.executable, __file__, "--worker", "--engine-precision", engine_precision]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        results.append(rows)
        print(f"process {i}: " + "; ".join(f"step {r['step']} {r['tokens']} tokens, {r['weights']}" for r in rows))
    same = all(r == results[0] for r in results)
    print(f"{n} processes, one seed: {'identical' if same else 'DIFFERENT'}")
    return same


def check_resume(engine_precision: str) -> bool:
    import torch
    from safetensors.torch import load_file

    from anypo import checkpoint

    root = Path(tempfile.mkdtemp(prefix="same-seed-resume-"))
    args = [
        "--steps", "4", "--prompts-per-step", "2", "--samples-per-prompt", "4", "--sampling.max-new-tokens", "32",
        "--save-every", "1", "--eval-every", "0", "--seed", "0", "--threads", "2", "--no-progress",
        "--engine-precision", engine_precision,
    ]  # fmt: skip
    cli = [sys.executable, "-m", "anypo.cli"]
    subprocess.run([*cli, "train", "grpo", *args, "--out-dir", str(root / "a")], check=True, capture_output=True)
    b = subprocess.Popen([*cli, "train", "grpo", *args, "--out-dir", str(root / "b")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    while b.poll() is None:
        runs = list((root / "b").glob("grpo-*"))
        latest = checkpoint.latest(runs[0]) if runs else None
        if latest is not None and latest.name == "step_000002":
            os.kill(b.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    b.wait()
    run_a, run_b = next((root / "a").glob("grpo-*")), next((root / "b").glob("grpo-*"))
    if not (run_b / "final").exists():
        subprocess.run([*cli, "train", "--resume", str(run_b)], check=True, capture_output=True)
    else:
        print("run B finished before it was killed: resume not exercised")
        return False

    def rows(run: Path) -> dict[int, dict]:
        return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}

    ra, rb = rows(run_a), rows(run_b)
    keys = ("reward/mean", "loss/total", "train/grad_norm")
    same_rows = sorted(ra) == sorted(rb) and all(ra[s].get(k) == rb[s].get(k) for s in ra for k in keys)
    fa, fb = (load_file(str(r / "final" / "model.safetensors")) for r in (run_a, run_b))
    same_weights = fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    for s in sorted(ra):
        print(f"step {s}: " + ", ".join(f"{k} {ra[s].get(k)} / {rb.get(s, {}).get(k)}" for k in keys))
    print(f"killed after step 2 and resumed: metrics {'equal' if same_rows else 'DIFFERENT'}, "
          f"final weights {'equal' if same_weights else 'DIFFERENT'}")  # fmt: skip
    return same_rows and same_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--engine-precision", choices=ENGINE_PRECISIONS, default="auto")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.engine_precision)
        return
    ok = True
    if args.processes:
        ok &= check_processes(args.processes, args.engine_precision)
    if args.resume:
        ok &= check_resume(args.engine_precision)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
