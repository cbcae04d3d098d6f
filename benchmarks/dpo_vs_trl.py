"""One DPO step of anypo against Hugging Face TRL 1.16.0's DPOTrainer on the same CPU workload (W2).

W2 (see benchmarks/README.md): DPO (sigmoid loss, beta 0.1) on the embedded SmolLM2-135M-Instruct in
float32, 64 preference pairs per optimizer step in micro-batches of 8 pairs, prompts of about 64 and
responses of about 60 tokens, lr 1e-6 constant, AdamW (0.9, 0.999), no weight decay, grad-norm clip
1.0, 2 torch threads. Reference log-probs are **precomputed in both** libraries before the first
step and excluded from the step time (anypo: the cached reference column of ``anypo.train_pref``;
TRL: ``precompute_ref_log_probs=True``); each library's precompute time is reported separately.
Neither library holds a reference model while training. TRL runs without gradient checkpointing
(its DPOConfig default is on; anypo does not checkpoint) and without bf16 autocast (its default is on;
W2 is float32) unless ``--trl-bf16``.

The pairs are generated here, deterministically from ``--seed``: "Add up a, b, c, d, e step by step"
with five 2-digit numbers; the chosen response adds them one at a time ("12 + 47 = 59. ..." then
"Answer: N"), the rejected one makes one slip and carries it on. Both libraries train on the same
pairs in the same order, step for step: anypo's seeded pair order, and TRL reading the dataset in that
order with ``train_sampling_strategy="sequential"``. TRL gets the chat-templated prompt as plain text
and appends its EOS (``<|im_end|>``) to each response, which is exactly anypo's tokenization; the TRL
worker checks token for token that its tokenized pairs equal anypo's before it starts.

The driver starts two persistent workers (this file with ``--worker anypo|trl``, under the bench
venv's python), one after the other, each up to the point where it has loaded its model and
precomputed its reference log-probs, then alternates single training steps (anypo, TRL, anypo, ...):
``--warmup`` steps each, excluded from the statistics, then ``--steps``. A worker gets ``step`` on
stdin, runs one optimizer step and answers one JSON line with per-phase seconds, the step's loss and
mean log-probs; ``quit`` ends it. Only one worker computes at a time.

    bash benchmarks/setup_bench.sh                                  # once: benchmarks/.venv-bench
    benchmarks/.venv-bench/bin/python benchmarks/dpo_vs_trl.py      # W2: 1 warm-up + 3 measured steps
    benchmarks/.venv-bench/bin/python benchmarks/dpo_vs_trl.py --quick   # smoke test (16 pairs, 1 + 1)

Same loss on the same batch: each step's DPO loss and mean chosen / rejected log-probs of both
libraries are printed side by side, with their largest difference. At step 1 the policy is the
reference in both, so the loss is log 2 there; the log-probs (about -60 nats a response) already
compare the two forward passes, and later steps compare the updates too.

The last printed line is ``ratio anypo/trl step time: X``, X the median anypo step time over the
median TRL step time. Raw step records go to --out (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the driver pieces shared with grpo_vs_trl

from _driver import (  # noqa: E402
    LIBS,
    Protocol,
    Quit,
    Worker,
    add_process_args,
    alternate_steps,
    cpu_s,
    cpu_shares,
    fmt,
    machine_line,
    machine_record,
    peak_rss_gb,
    phase_medians,
    prepare_driver,
    print_phase_table,
    read_command,
    versions,
    warn_foreign_cpu,
)

# ---- W2: the workload, shared by both workers ----
W2 = {
    "model": "smollm2-135m-instruct (embedded, float32)",
    "loss": "dpo (sigmoid)",
    "beta": 0.1,
    "pairs_per_step": 64,
    "micro_batch_size": 8,
    "numbers_per_prompt": 5,  # prompt ~64 tokens with the chat template, responses ~60 tokens with EOS
    "lr": 1e-6,
    "betas": (0.9, 0.999),
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "threads": 2,
    "reference": "precomputed in both (anypo: cached reference column; TRL: precompute_ref_log_probs=True)",
}
MAX_TOKENS = 512  # per prompt and per response in anypo; no W2 pair comes near it

PHASES = (
    ("forward_s", "loss forward"),
    ("backward_s", "backward"),
    ("optimizer_s", "optimizer (clip + step)"),
    ("other_s", "other (step - phases)"),
    ("step_s", "whole step"),
)
ANYPO_KEYS = {"forward_s": "time/forward_s", "backward_s": "time/backward_s", "optimizer_s": "time/optimizer_s"}


# ---- the pairs ----
def make_pairs(n: int, seed: int, k: int) -> list[dict[str, str]]:
    """``n`` pairs in the plain form: prompt (user text), chosen (correct running sums), rejected (one slip)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        nums = [rng.randint(10, 99) for _ in range(k)]
        prompt = f"Add up {', '.join(map(str, nums))} step by step. Put the final answer after 'Answer:'."
        slip_at, slip = rng.randrange(1, k), rng.choice([-10, -1, 1, 10])
        texts = []
        for wrong in (False, True):
            s, steps = nums[0], []
            for j, x in enumerate(nums[1:], start=1):
                t = s + x + (slip if wrong and j == slip_at else 0)
                steps.append(f"{s} + {x} = {t}.")
                s = t
            texts.append(" ".join(steps) + f"\nAnswer: {s}")
        rows.append({"prompt": prompt, "chosen": texts[0], "rejected": texts[1]})
    return rows


def write_pairs(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def visit_order(n: int, seed: int) -> list[int]:
    """The pair indices anypo's preference loop visits, in order (one epoch of ``n`` pairs)."""
    from anypo.train_pref import PairOrder

    return PairOrder(n, seed, 1).peek(0, n)


VERSIONS = ("torch", "transformers", "trl", "accelerate", "datasets", "anypo")  # reported by each worker


# ---- workers ----
def anypo_worker(args: argparse.Namespace, proto: Protocol) -> None:
    import torch

    from anypo.losses.preference import DPO
    from anypo.models import ModelConfig
    from anypo.tasks.preference_data import PreferenceDataConfig
    from anypo.train_pref import PrefAlgoConfig, PrefLoop, PrefTrainConfig

    torch.set_num_threads(W2["threads"])
    t0 = time.perf_counter()
    cfg = PrefTrainConfig(
        algo=PrefAlgoConfig(loss=DPO(beta=W2["beta"])),
        model=ModelConfig(onednn_linear=not args.anypo_no_onednn),
        data=PreferenceDataConfig(name=args.data, num_heldout=0),
        name="bench-anypo",
        steps=args.total_steps,
        pairs_per_step=args.pairs_per_step,
        micro_batch_size=args.micro_batch_size,
        lr=W2["lr"],
        betas=W2["betas"],
        weight_decay=W2["weight_decay"],
        warmup_steps=0,
        lr_schedule="constant",
        max_grad_norm=W2["max_grad_norm"],
        max_prompt_tokens=MAX_TOKENS,
        max_response_tokens=MAX_TOKENS,
        precision="bf16" if args.bf16 else "fp32",
        seed=args.seed,
        threads=W2["threads"],
        eval_every=0,
        log_samples=0,
        progress=False,
        out_dir=args.tmp,
    )
    run_dir = Path(args.tmp) / "run"  # the reference column is written there; the driver removes it
    run_dir.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)  # as anypo.run.run_loop does before building the loop
    torch.manual_seed(cfg.seed)
    loop = PrefLoop.build(cfg, run_dir)
    tp = loop.train_pairs
    proto.send(
        "ready",
        lib="anypo",
        load_s=time.perf_counter() - t0,
        reference_s=loop.reference_seconds,
        versions=versions(VERSIONS),
        settings={
            "micro_batch_size": cfg.micro_batch_size,
            "pairs_per_step": cfg.pairs_per_step,
            "pack_prompts": cfg.pack_prompts,
            "precision": cfg.precision,
            "onednn_linear": cfg.model.onednn_linear,
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "optimizer": type(loop.optimizer).__name__,
            "optimizer_fused": loop.optimizer.defaults.get("fused"),
            "reference": "cached column",
            "pairs": len(tp),
            "prompt_tokens_mean": statistics.fmean(len(p) for p in tp.prompt),
            "response_tokens_mean": statistics.fmean(
                len(c) + len(r) for c, r in zip(tp.chosen, tp.rejected, strict=True)
            )
            / 2,
        },
    )
    step = 0
    while read_command() == "step":
        step += 1
        t, c = time.perf_counter(), cpu_s()
        m, _ = loop.train_step(step)
        loop.mid_update = False  # the scaffold's job after logging a step
        wall, cpu = time.perf_counter() - t, cpu_s() - c
        rec = {key: m.get(metric) for key, metric in ANYPO_KEYS.items()}
        rec |= {
            "step_s": wall,
            "cpu_s": cpu,
            "loss": m.get("pref/loss"),
            "logps_chosen": m.get("pref/logps_chosen"),
            "logps_rejected": m.get("pref/logps_rejected"),
            "reward_margin": m.get("pref/reward_margin"),
            "grad_norm": m.get("train/grad_norm"),
            "pairs": int(m["data/pairs"]),
            "tokens": int(m["data/prompt_tokens"] + m["data/response_tokens"]),
            "skipped_updates": m.get("train/skipped_updates"),
            "peak_rss_gb": peak_rss_gb(),
        }
        proto.send("step", lib="anypo", step=step, **rec)


def trl_config(args: argparse.Namespace):
    """TRL's DPOConfig for W2 (float32, precomputed reference, no gradient checkpointing, anypo's order)."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=args.tmp,  # the driver removes it
        model_init_kwargs={"dtype": "float32"},
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.pairs_per_step // args.micro_batch_size,
        loss_type=["sigmoid"],
        beta=W2["beta"],
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=args.micro_batch_size,
        max_length=None,  # no truncation (anypo truncates nothing either)
        gradient_checkpointing=False,  # TRL's DPO default is True; anypo does not checkpoint
        learning_rate=W2["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=W2["betas"][0],
        adam_beta2=W2["betas"][1],
        weight_decay=W2["weight_decay"],
        max_grad_norm=W2["max_grad_norm"],
        bf16=args.trl_bf16,  # W2 is float32; TRL defaults to bf16 autocast
        use_cpu=True,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        max_steps=args.total_steps + 1,
        save_strategy="no",
        logging_steps=10**9,  # the driver reads the metrics itself
        report_to="none",
        seed=args.seed,
    )


def trl_worker(args: argparse.Namespace, proto: Protocol) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from anypo import models
    from anypo.tasks.preference_data import PreferencePair
    from anypo.train_pref import tokenize_pairs

    torch.set_num_threads(W2["threads"])
    t0 = time.perf_counter()
    tok = models.load_tokenizer()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    order = visit_order(len(rows), args.seed)

    def templated(prompt: str) -> str:
        return tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    # anypo's visit order, read sequentially: step s trains on the same pairs in both libraries
    dataset = Dataset.from_list(
        [
            {"prompt": templated(rows[i]["prompt"]), "chosen": rows[i]["chosen"], "rejected": rows[i]["rejected"]}
            for i in order
        ]
    )
    config = trl_config(args)
    precompute = {"s": 0.0}
    real_precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **k):
        t = time.perf_counter()
        try:
            return real_precompute(self, *a, **k)
        finally:
            precompute["s"] += time.perf_counter() - t

    DPOTrainer._precompute_ref_logps = timed_precompute
    T = {"forward": 0.0, "backward": 0.0, "losses": [], "start": None, "opt_start": None, "cpu_start": None}

    class Driven(TrainerCallback):
        """Blocks before each optimizer step until the driver says ``step``; reports the previous one."""

        pending: dict | None = None

        def on_step_begin(self, a, state, control, **kw):
            self.flush()
            if read_command() != "step":
                raise Quit
            T.update(forward=0.0, backward=0.0, losses=[], opt_start=None)
            T["metrics_at"] = {k: len(v) for k, v in trainer._metrics["train"].items()}
            T["start"], T["cpu_start"] = time.perf_counter(), cpu_s()

        def on_step_end(self, a, state, control, **kw):
            step_s, cpu = time.perf_counter() - T["start"], cpu_s() - T["cpu_start"]
            new = {k: v[T["metrics_at"].get(k, 0) :] for k, v in trainer._metrics["train"].items()}

            def mean(key):
                vals = new.get(key) or []
                return sum(vals) / len(vals) if vals else None

            self.pending = {
                "forward_s": T["forward"],
                "backward_s": T["backward"],
                "optimizer_s": time.perf_counter() - T["opt_start"] if T["opt_start"] is not None else None,
                "step_s": step_s,
                "cpu_s": cpu,
                # equal micro-batches of 8 pairs: the mean of their means is the step's mean
                "loss": sum(T["losses"]) / len(T["losses"]) if T["losses"] else None,
                "logps_chosen": mean("logps/chosen"),
                "logps_rejected": mean("logps/rejected"),
                "reward_margin": mean("rewards/margins"),
                "pairs": args.pairs_per_step,
                "micro_batches": len(T["losses"]),
                "peak_rss_gb": peak_rss_gb(),
                "global_step": state.global_step,
            }

        def on_train_end(self, a, state, control, **kw):
            self.flush()

        def flush(self):
            if self.pending is not None:
                proto.send("step", lib="trl", step=self.pending.pop("global_step"), **self.pending)
                self.pending = None
            elif T["start"] is None:
                proto.send(
                    "ready",
                    lib="trl",
                    load_s=time.perf_counter() - t0,
                    reference_s=precompute["s"],
                    versions=versions(VERSIONS),
                    settings=settings,
                )

    trainer = DPOTrainer(model=str(models.embedded_dir()), args=config, train_dataset=dataset, callbacks=[Driven()])

    # The same tokens as anypo: TRL's tokenized pairs against anypo's tokenize_pairs, token for token.
    pairs = [
        PreferencePair(({"role": "user", "content": rows[i]["prompt"]},), rows[i]["chosen"], rows[i]["rejected"])
        for i in order[:16]
    ]
    ours, _ = tokenize_pairs(pairs, tok, MAX_TOKENS, MAX_TOKENS)
    for j in range(len(pairs)):
        theirs = trainer.train_dataset[j]
        for name, mine in (
            ("prompt_ids", ours.prompt[j]),
            ("chosen_ids", ours.chosen[j]),
            ("rejected_ids", ours.rejected[j]),
        ):
            if list(theirs[name]) != list(mine):
                raise RuntimeError(
                    f"pair {j}: TRL's {name} differ from anypo's: {list(theirs[name])[:8]}... vs {mine[:8]}..."
                )

    def on_loss(orig):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                loss = orig(*a, **k)
            finally:
                T["forward"] += time.perf_counter() - t
            T["losses"].append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

        return call

    def on_backward(orig):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                T["backward"] += time.perf_counter() - t

        return call

    def on_clip(orig):
        def call(*a, **k):
            T["opt_start"] = time.perf_counter()
            return orig(*a, **k)

        return call

    trainer.compute_loss = on_loss(trainer.compute_loss)
    trainer.accelerator.backward = on_backward(trainer.accelerator.backward)
    trainer._clip_grad_norm = on_clip(trainer._clip_grad_norm)
    a = trainer.args
    settings = {
        "per_device_train_batch_size": a.per_device_train_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps,
        "gradient_checkpointing": a.gradient_checkpointing,
        "precompute_ref_log_probs": a.precompute_ref_log_probs,
        "reference_model": trainer.ref_model is not None,
        "bf16": a.bf16,
        "optim": str(a.optim),
        "padding_free": a.padding_free,
        "disable_dropout": a.disable_dropout,
        "train_sampling_strategy": a.train_sampling_strategy,
        "device": str(a.device),
        "model_dtype": str(trainer.model.dtype),
        "tokens_checked_pairs": len(pairs),
    }
    with contextlib.suppress(Quit):  # the driver's quit, raised between two steps
        trainer.train()


def worker_main(args: argparse.Namespace) -> None:
    proto = Protocol()
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    (anypo_worker if args.worker == "anypo" else trl_worker)(args, proto)


# ---- driver ----
def start_worker(lib: str, python: str, args: argparse.Namespace, data: Path, log: Path, tmp: Path) -> Worker:
    cmd = [python, str(Path(__file__).resolve()), "--worker", lib, "--data", str(data)]
    cmd += ["--pairs-per-step", str(args.pairs_per_step), "--micro-batch-size", str(args.micro_batch_size)]
    cmd += ["--total-steps", str(args.warmup + args.steps), "--seed", str(args.seed), "--tmp", str(tmp / lib)]
    cmd += ["--trl-bf16"] if args.trl_bf16 else []
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--anypo-no-onednn"] if args.anypo_no_onednn else []
    return Worker(lib, cmd, W2["threads"], log, close_timeout=300, extra_env={"TQDM_DISABLE": "1"})


def run(args: argparse.Namespace, python: str, log_dir: Path) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="dpo-vs-trl-")
    data = Path(tmp.name) / "w2_pairs.jsonl"
    n = args.pairs_per_step * (args.warmup + args.steps)
    write_pairs(data, make_pairs(n, args.seed, W2["numbers_per_prompt"]))
    # one worker at a time up to "ready": loading and the reference precompute of two workers at once
    # would share the 2 cores (each precompute then takes minutes and its time means nothing)
    workers, ready = {}, {}
    try:
        for lib in LIBS:
            workers[lib] = start_worker(lib, python, args, data, log_dir / f"dpo_vs_trl.{lib}.log", Path(tmp.name))
            ready[lib] = workers[lib].read("ready")
        for lib, r in ready.items():
            print(
                f"  {lib} ready after {r['load_s']:.1f} s (reference precompute {r['reference_s']:.1f} s): "
                f"{json.dumps(r['settings'])}",
                flush=True,
            )
        records = alternate_steps(
            workers,
            args,
            [k for k, _ in PHASES[:3]],
            {},
            lambda rec, warm: (
                f"  {rec['lib']:>5} step {rec['step']}{' (warm-up)' if warm else ''}: {rec['step_s']:.2f} s, "
                f"loss {rec['loss']:.6f}, logps chosen {rec['logps_chosen']:.4f} rejected {rec['logps_rejected']:.4f}"
            ),
        )
    finally:
        for w in workers.values():
            w.close()
        tmp.cleanup()
    return {"ready": ready, "records": records, "pairs": n}


def summarize(result: dict) -> dict:
    out: dict = {}
    for lib in LIBS:
        recs = [r for r in result["records"] if r["lib"] == lib and not r["warmup"]]
        s = phase_medians(recs, PHASES)
        s["peak_rss_gb"] = max(r["peak_rss_gb"] for r in result["records"] if r["lib"] == lib)
        s |= cpu_shares(recs)
        s["reference_s"] = result["ready"][lib]["reference_s"]
        out[lib] = s
    by_step = {}
    for r in result["records"]:
        by_step.setdefault(r["step"], {})[r["lib"]] = r
    diffs = {"loss": [], "logps_chosen": [], "logps_rejected": []}
    for pair in by_step.values():
        if len(pair) == 2:
            for k in diffs:
                diffs[k].append(abs(pair["anypo"][k] - pair["trl"][k]))
    out["max_abs_diff"] = {k: max(v) if v else None for k, v in diffs.items()}
    out["ratio"] = out["anypo"]["step_s"] / out["trl"]["step_s"]
    out["rss_ratio"] = out["anypo"]["peak_rss_gb"] / out["trl"]["peak_rss_gb"]
    return out


def report(result: dict, s: dict, args: argparse.Namespace) -> None:
    a, t = s["anypo"], s["trl"]
    print(f"\nW2: median over {a['steps']} measured steps (after {args.warmup} warm-up), seconds")
    print_phase_table(a, t, PHASES)
    print(f"{'reference precompute (once)':<30}{fmt(a['reference_s']):>10}{fmt(t['reference_s']):>10}")
    print(f"{'peak RSS (GB)':<30}{a['peak_rss_gb']:>10.2f}{t['peak_rss_gb']:>10.2f}{s['rss_ratio']:>11.2f}")
    print(f"{'worker CPU s per wall s':<30}{a['cpu_per_wall']:>10.2f}{t['cpu_per_wall']:>10.2f}")
    settings = result["ready"]["anypo"]["settings"]
    print(
        f"pairs per step {args.pairs_per_step}, micro-batches of {args.micro_batch_size} pairs; mean prompt "
        f"{settings['prompt_tokens_mean']:.1f} tokens, mean response {settings['response_tokens_mean']:.1f} tokens"
    )
    print("\nsame batch, same loss (per step: anypo | trl)")
    print(f"{'step':>5}{'loss':>24}{'logps chosen':>28}{'logps rejected':>28}")
    by_step = {}
    for r in result["records"]:
        by_step.setdefault(r["step"], {})[r["lib"]] = r
    for step, pair in sorted(by_step.items()):
        if len(pair) == 2:
            an, tr = pair["anypo"], pair["trl"]
            print(
                f"{step:>5}{an['loss']:>12.6f}{tr['loss']:>12.6f}{an['logps_chosen']:>14.4f}{tr['logps_chosen']:>14.4f}"
                f"{an['logps_rejected']:>14.4f}{tr['logps_rejected']:>14.4f}"
            )
    d = s["max_abs_diff"]
    print(
        f"largest difference: loss {fmt(d['loss'], '.2e')}, logps chosen {fmt(d['logps_chosen'], '.2e')}, "
        f"logps rejected {fmt(d['logps_rejected'], '.2e')} (float32; log-probs of ~60 tokens)"
    )
    warn_foreign_cpu(s)
    if not math.isfinite(s["ratio"]):
        print("WARNING: a step time is missing")


def driver(args: argparse.Namespace) -> None:
    python, out = prepare_driver(args)
    print(
        f"W2: DPO, {args.pairs_per_step} pairs per step in micro-batches of {args.micro_batch_size}, reference "
        f"log-probs precomputed in both; {args.warmup} warm-up + {args.steps} measured steps per library, "
        f"alternating; workers: {python}",
        flush=True,
    )
    machine = machine_record(python, W2["threads"])
    print(machine_line(machine, W2["threads"]), flush=True)
    t0 = time.time()
    result = run(args, python, out.parent)
    s = summarize(result)
    data = {
        "workload": W2 | {"pairs_per_step": args.pairs_per_step, "micro_batch_size": args.micro_batch_size},
        "args": vars(args),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
        "machine": machine,
        "wall_s": time.time() - t0,
        "result": result,
        "summary": s,
    }
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    report(result, s, args)
    print(f"\nraw step records: {out}")
    print(f"ratio anypo/trl step time: {s['ratio']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="measured steps per library")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per library, excluded from the statistics")
    ap.add_argument("--pairs-per-step", type=int, default=W2["pairs_per_step"])
    ap.add_argument(
        "--micro-batch-size",
        type=int,
        default=W2["micro_batch_size"],
        help="pairs per forward/backward pass in both libraries (TRL: per_device_train_batch_size, with "
        "gradient accumulation over the step)",
    )
    ap.add_argument(
        "--trl-bf16", action="store_true", help="TRL with its default bf16 autocast (not W2, which is float32)"
    )
    ap.add_argument("--bf16", action="store_true", help="both libraries under bfloat16 autocast (not W2)")
    ap.add_argument("--anypo-no-onednn", action="store_true", help="anypo with PyTorch's default float32 linear (MKL)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 16 pairs per step, 1 warm-up + 1 step")
    ap.add_argument("--seed", type=int, default=0, help="the pairs, anypo's pair order (which TRL reads too)")
    ap.add_argument("--out", default=str(HERE / "results" / "dpo_vs_trl.json"), help="raw step records (JSON)")
    add_process_args(ap)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.tmp = args.tmp or tempfile.mkdtemp(prefix=f"dpo-vs-trl-{args.worker}-")
        worker_main(args)
        return
    if args.quick:
        args.warmup, args.steps, args.pairs_per_step = 1, 1, 16
    args.trl_bf16 = args.trl_bf16 or args.bf16
    if args.steps < 1 or args.warmup < 0:
        ap.error("need --steps >= 1 and --warmup >= 0")
    if args.micro_batch_size < 1 or args.pairs_per_step % args.micro_batch_size:
        ap.error(f"--micro-batch-size must divide the {args.pairs_per_step} pairs of a step")
    driver(args)


if __name__ == "__main__":
    main()
