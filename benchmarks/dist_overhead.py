"""What running the online loop on Ray costs, and what async mode overlaps, on this machine.

The same run (seed, preset, batch shape) three ways, one after the other, nothing else running:

1. ``single``: one process (``anypo.train.train``);
2. ``sync``: ``--dist.backend ray``, R rollout actors and L learners (default 1 and 1): generation in
   the rollout actor, the update in the learner, weights gathered and loaded after each update;
3. ``async``: the same with ``--dist.async --dist.max-staleness 1``: the next batch is generated
   while the learner trains.

Per mode, over the steps after ``--warmup``: the median step time, and its parts from the run's
metrics (generation, the learners' update, the weight sync; async: generation that overlapped the
update and the update's time left after it). Two cores cannot show a speed-up from distribution:
the point is the overhead of the distribution itself (sync against single) and how much of the
generation async hides behind the update (async against sync). The run's wall time outside its
steps (on Ray: starting the cluster, the actors importing torch and loading the model, shutting
down; everywhere: checkpoints and the final export) is reported apart as ``set-up``.

    python benchmarks/dist_overhead.py --workload tiny --steps 6
    python benchmarks/dist_overhead.py --workload w1 --steps 4 --warmup 1

Raw records go to ``benchmarks/results/dist_overhead_<workload>.json`` (date, CPU model, versions).
The last line is ``async step / sync step: X``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def cpu_model() -> dict[str, str | bool]:
    """The CPU's model name and whether it has AVX-512 BF16 (Linux /proc/cpuinfo)."""
    from anypo.runs import cpu_info

    model, flags = cpu_info()
    if not (model or flags):
        return {"model": platform.processor() or "unknown"}
    return {"model": model or "unknown", "avx512_bf16": "avx512_bf16" in flags}


def config(workload: str, steps: int, out_dir: str):
    """The run of ``workload``: ``tiny`` (the tests' tiny model, 2 prompts x 4 samples, 8 new tokens, a
    per-sample toy reward) or ``w1`` (the embedded model, W1's batch shape: 4 x 8, 64 new tokens, KL 0)."""
    from anypo.config import TrainConfig
    from anypo.engines.base import SamplingConfig
    from anypo.models import ModelConfig
    from anypo.tasks import TaskConfig

    if workload == "tiny":
        toy = HERE.parent / "tests" / "e2e" / "toy_rewards.py"
        return TrainConfig(
            model=ModelConfig(name="tiny"),
            task=TaskConfig(name="addition", num_train=64, num_heldout=8),
            sampling=SamplingConfig(max_new_tokens=8),
            rewards=(f"{toy}:char_sum",),
            prompts_per_step=2,
            samples_per_prompt=4,
            micro_batch_size=4,
            steps=steps,
            lr=1e-3,
            eval_every=0,
            save_every=steps,
            progress=False,
            out_dir=out_dir,
        )
    from grpo_vs_trl import W1, w1_train_config

    cfg = w1_train_config(
        0.0,
        name="w1",
        steps=steps,
        max_new_tokens=W1["max_new_tokens"],
        micro_batch_size=W1["micro_batch_size"],
        precision="fp32",
        seed=0,
        out_dir=out_dir,
        model=ModelConfig(),
    )
    return dataclasses.replace(cfg, save_every=steps)


def run_mode(
    mode: str, cfg, rollout_workers: int, learners: int, cpus_per_actor: int = 1, check_logprobs: bool = True
) -> tuple[list[dict], float]:
    """Train ``cfg`` in ``mode``; its training-step metric rows and the wall time outside its steps."""
    from anypo.config import DistConfig

    if mode != "single":
        cfg = dataclasses.replace(
            cfg,
            dist=DistConfig(
                backend="ray",
                rollout_workers=rollout_workers,
                learners=learners,
                asynchronous=mode == "async",
                max_staleness=1,
                object_store_mb=512,
                cpus_per_actor=cpus_per_actor,
                check_logprobs=check_logprobs,
            ),
        )
        from anypo.distributed import train
    else:
        from anypo.train import train
    t0 = time.time()
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r]
    # the run's wall time minus its steps' time: set-up and teardown (model load; on Ray the cluster and
    # the actors), checkpoints and the final export
    setup = time.time() - t0 - sum(r["time/step_s"] for r in rows)
    return rows, setup


KEYS = {
    "single": ("time/step_s", "time/generate_s", "time/train_s"),
    "sync": ("time/step_s", "time/generate_s", "time/learn_s", "time/weight_sync_s"),
    "async": (
        "time/step_s",
        "time/generate_wait_s",
        "time/generate_ahead_s",
        "time/learn_wait_s",
        "time/weight_sync_s",
        "dist/staleness",
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("tiny", "w1"), default="tiny")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the medians")
    ap.add_argument("--rollout-workers", type=int, default=1)
    ap.add_argument("--learners", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["single", "sync", "async"], choices=["single", "sync", "async"])
    ap.add_argument(
        "--cpus-per-actor",
        type=int,
        default=1,
        help="dist.cpus-per-actor: each actor's torch threads (1: one process's 2 threads are split over 2 actors)",
    )
    ap.add_argument(
        "--no-check-logprobs",
        action="store_true",
        help="dist.check-logprobs off: no learner pass to log the engine/learner log-prob gap",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="raw records (default results/dist_overhead_<workload>.json)"
    )
    args = ap.parse_args()
    from _driver import versions

    record: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "versions": versions(["torch", "transformers", "ray"]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "modes": {},
    }
    medians: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            cfg = config(args.workload, args.steps, str(Path(tmp) / mode))
            rows, setup = run_mode(
                mode, cfg, args.rollout_workers, args.learners, args.cpus_per_actor, not args.no_check_logprobs
            )
            kept = rows[args.warmup :]
            medians[mode] = {k: statistics.median(r[k] for r in kept) for k in KEYS[mode] if all(k in r for r in kept)}
            record["modes"][mode] = {"setup_s": setup, "rows": rows, "medians": medians[mode]}
            parts = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in medians[mode].items())
            print(f"{mode:6s} set-up {setup:6.1f} s | median over {len(kept)} steps: {parts}", flush=True)
    out = args.out or HERE / "results" / f"dist_overhead_{args.workload}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"raw records: {out}")
    if "single" in medians and "sync" in medians:
        print(f"sync step / single step: {medians['sync']['time/step_s'] / medians['single']['time/step_s']:.3f}")
    if "sync" in medians and "async" in medians:
        print(f"async step / sync step: {medians['async']['time/step_s'] / medians['sync']['time/step_s']:.3f}")


if __name__ == "__main__":
    main()
