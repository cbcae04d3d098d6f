"""One GRPO step of anypo against Hugging Face TRL 1.16.0's GRPOTrainer on the same CPU workload (W1).

W1 (see benchmarks/README.md): the embedded SmolLM2-135M-Instruct in float32, 2-digit addition,
4 prompts x 8 samples per step, at most 64 new tokens, temperature 1 (no top-p / top-k), one policy
update per batch, lr 1e-5 constant, AdamW (0.9, 0.999), no weight decay, grad-norm clip 1.0, GRPO
clip loss (eps 0.2, per-sequence token mean, group-std advantages), KL coefficient 0 and 0.04, 2 torch
threads. Both libraries see the same chat-templated prompt strings, in the same order (anypo's
uniform sampler), scored by the same anypo task reward.

The driver starts two persistent workers (this file with ``--worker anypo|trl``, under the bench
venv's python), waits until both have loaded their model, then alternates single training steps
(anypo, TRL, anypo, ...): ``--warmup`` steps each, excluded from the statistics, then ``--steps``.
A worker gets ``step`` on stdin, runs one full step and answers one JSON line with per-phase seconds;
``quit`` ends it. Only one worker computes at a time.

    bash benchmarks/setup_bench.sh                                  # once: benchmarks/.venv-bench
    benchmarks/.venv-bench/bin/python benchmarks/grpo_vs_trl.py     # W1, KL 0 and 0.04, 1 + 5 steps each
    benchmarks/.venv-bench/bin/python benchmarks/grpo_vs_trl.py --quick   # smoke test (16 new tokens, 1 + 1)

The last printed line is ``ratio anypo/trl step time: X``, X the largest over the KL variants of
median anypo step time / median TRL step time. Raw step records go to --out (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from anypo.validate import ENGINE_PRECISIONS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the driver pieces shared with dpo_vs_trl

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

# ---- W1: the workload, shared by both workers ----
W1 = {
    "model": "smollm2-135m-instruct (embedded, float32)",
    "task": "addition",
    "prompts_per_step": 4,
    "samples_per_prompt": 8,
    "max_new_tokens": 64,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "lr": 1e-5,
    "betas": (0.9, 0.999),
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "clip_eps": 0.2,
    "micro_batch_size": 8,
    "threads": 2,
}
MAX_PROMPT_TOKENS = 512  # anypo's default; no addition prompt comes near it

# Phases of one step, in report order: (record key, label).
PHASES = (
    ("generate_s", "generation (sample + reward)"),
    ("prepare_s", "reference / old log-probs"),
    ("forward_s", "loss forward"),
    ("backward_s", "backward"),
    ("optimizer_s", "optimizer (clip + step)"),
    ("other_s", "other (step - phases)"),
    ("step_s", "whole step"),
)
MICRO_KEYS = ("micro_batch_size", "per_device_train_batch_size")  # in each worker's ready settings
ANYPO_KEYS = {  # record key -> anypo metric of Context.step
    "generate_s": "time/generate_s",
    "prepare_s": "time/prepare_s",
    "forward_s": "time/forward_s",
    "backward_s": "time/backward_s",
    "optimizer_s": "time/optimizer_s",
}


def w1_algo(kl: float):
    """anypo's ``grpo`` preset with the KL coefficient ``kl`` (no regularizer at all for 0)."""
    import dataclasses

    from anypo.algorithms import PRESETS

    algo = PRESETS["grpo"].build()
    if kl == 0:
        return dataclasses.replace(algo, regularizers=())
    return dataclasses.replace(algo, regularizers=tuple(dataclasses.replace(r, coef=kl) for r in algo.regularizers))


def w1_train_config(
    kl: float,
    *,
    name: str,
    steps: int,
    max_new_tokens: int,
    micro_batch_size: int,
    precision: str,
    seed: int,
    out_dir: str,
    model,
):
    """anypo's TrainConfig for W1 (the ``grpo`` preset with KL coefficient ``kl``), no evaluation."""
    from anypo.config import TrainConfig
    from anypo.engines.base import SamplingConfig

    return TrainConfig(
        model=model,
        algo=w1_algo(kl),
        name=name,
        steps=steps,
        prompts_per_step=W1["prompts_per_step"],
        samples_per_prompt=W1["samples_per_prompt"],
        sampling=SamplingConfig(
            temperature=W1["temperature"], top_p=W1["top_p"], top_k=W1["top_k"], max_new_tokens=max_new_tokens
        ),
        lr=W1["lr"],
        betas=W1["betas"],
        weight_decay=W1["weight_decay"],
        warmup_steps=0,
        lr_schedule="constant",
        max_grad_norm=W1["max_grad_norm"],
        micro_batch_size=micro_batch_size,
        precision=precision,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        seed=seed,
        threads=W1["threads"],
        eval_every=0,
        progress=False,
        log_samples=0,
        out_dir=out_dir,
    )


def w1_context(name: str, steps: int, engine_precision: str = "auto"):
    """A built anypo ``Context`` for W1 without KL (float32 training, seed 0, W1's micro-batches) in a
    fresh temporary run directory: the setting of the single-library scripts."""
    import dataclasses
    from pathlib import Path

    import torch

    from anypo.models import ModelConfig
    from anypo.train import Context

    tmp = tempfile.mkdtemp(prefix=f"{name}-")
    cfg = w1_train_config(
        0.0, name=name, steps=steps, max_new_tokens=W1["max_new_tokens"],
        micro_batch_size=W1["micro_batch_size"], precision="fp32", seed=0, out_dir=tmp, model=ModelConfig(),
    )  # fmt: skip
    cfg = dataclasses.replace(cfg, engine_precision=engine_precision)
    torch.manual_seed(cfg.seed)
    return Context.build(cfg, Path(tmp))


def prompt_order(algo, num_prompts: int, steps: int, seed: int) -> list[int]:
    """The prompt indices anypo's sampler draws in steps 1..steps (4 per step), in order."""
    from anypo import registry

    cfg = algo.sampler or registry.get("sampler", "uniform")[1]()
    sampler = registry.registry("sampler").fn_for(cfg)(cfg, num_prompts, W1["prompts_per_step"], seed)
    return [i for step in range(1, steps + 1) for i in sampler.next_prompts(step)]


def group_means(rewards: list[float], group: int) -> list[float]:
    return [sum(rewards[i : i + group]) / group for i in range(0, len(rewards), group)]


# ---- workers ----
VERSIONS = ("torch", "transformers", "trl", "accelerate", "anypo")  # reported by each worker


def anypo_worker(args: argparse.Namespace, proto: Protocol) -> None:
    import random

    import torch

    from anypo.models import ModelConfig
    from anypo.train import Context

    torch.set_num_threads(W1["threads"])
    t0 = time.perf_counter()
    cfg = w1_train_config(
        args.kl,
        name="bench-anypo",
        steps=args.total_steps,
        max_new_tokens=args.max_new_tokens,
        micro_batch_size=args.micro_batch_size,
        precision="bf16" if args.bf16 else "fp32",
        seed=args.seed,
        out_dir=args.tmp,  # the run directory (reference weights offloaded there); the driver removes it
        model=ModelConfig(onednn_linear=not args.anypo_no_onednn),
    )
    cfg = dataclasses.replace(cfg, engine_precision=args.anypo_engine_precision)
    random.seed(cfg.seed)  # as anypo.train.train does before building the context
    torch.manual_seed(cfg.seed)
    ctx = Context.build(cfg, Path(cfg.out_dir))
    G = cfg.samples_per_prompt
    proto.send(
        "ready",
        lib="anypo",
        load_s=time.perf_counter() - t0,
        versions=versions(VERSIONS),
        settings={
            "algo": repr(cfg.algo),
            "micro_batch_size": cfg.micro_batch_size,
            "reference": ctx.reference is not None,
            "regularizers": repr(cfg.algo.regularizers),
            "optimizer": type(ctx.optimizer).__name__,
            "optimizer_fused": ctx.optimizer.defaults.get("fused"),
            "precision": getattr(cfg, "precision", None),
            "engine_precision": cfg.engine_precision,
            "engine_precision_resolved": ctx.engine_precision,
            "reference_offload": getattr(cfg, "reference_offload", None),
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "dtype": cfg.model.dtype,
            "log_entropy": cfg.log_entropy,
        },
    )
    step = 0
    while read_command() == "step":
        step += 1
        t, c = time.perf_counter(), cpu_s()
        batch, m = ctx.step(step)
        wall, cpu = time.perf_counter() - t, cpu_s() - c
        rewards = batch.rewards.tolist()
        rec = {key: m.get(metric) for key, metric in ANYPO_KEYS.items()}
        missing = [metric for key, metric in ANYPO_KEYS.items() if rec[key] is None]
        rec |= {
            "step_s": wall,
            "cpu_s": cpu,
            "anypo_step_s": m.get("time/step_s"),
            "train_s": m.get("time/train_s"),
            "completion_tokens": int(batch.response_mask.sum()),
            "trained_seqs": int(batch.num_seqs),
            "reward_mean": sum(rewards) / len(rewards),
            "group_rewards": group_means(rewards, G),
            "zero_std_groups": sum(len(set(rewards[i : i + G])) == 1 for i in range(0, len(rewards), G)),
            "prompt_indices": batch.extras["prompt_index"][::G],
            "skipped_updates": m.get("train/skipped_updates"),
            "peak_rss_gb": peak_rss_gb(),
            "anypo_peak_rss_gb": m.get("memory/peak_rss_gb"),
            "missing_metrics": missing,
        }
        proto.send("step", lib="anypo", step=step, **rec)


class TRLTimers:
    """Per-step phase clocks around TRL's own methods (timing only: arguments and results pass through)."""

    def __init__(self) -> None:
        self.reset()
        self.in_prepare = False

    def reset(self) -> None:
        self.t = dict.fromkeys(
            ("prepare_inputs", "prepare", "forward", "backward", "sampling", "reward", "loss_logps"), 0.0
        )
        self.start = self.opt_start = self.cpu_start = None
        self.tokens = 0
        self.loss_seqs = 0
        self.rewards: list[float] = []
        self.prompt_indices: list[int] = []

    def wrap(self, obj, name: str, key) -> None:
        """Replace the bound method ``obj.name`` by one adding its wall time to ``self.t[key()]``."""
        orig = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                self.t[key()] += time.perf_counter() - t

        setattr(obj, name, timed)


def trl_worker(args: argparse.Namespace, proto: Protocol) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from anypo import models
    from anypo.tasks import format_prompt, get_task
    from anypo.trainer_setup import make_reward, tokenize_prompts

    torch.set_num_threads(W1["threads"])
    t0 = time.perf_counter()
    G, B, max_new = W1["samples_per_prompt"], W1["prompts_per_step"], args.max_new_tokens
    algo = w1_algo(args.kl)

    # The same prompts and reward as anypo's Context.build: chat-templated text, task reward (+ the preset's shaping).
    tok = models.load_tokenizer()
    task = get_task(W1["task"])
    examples, prompt_ids, _ = tokenize_prompts(task.train_examples(), tok, MAX_PROMPT_TOKENS)
    reward = make_reward(task, algo.reward_shaping, ())
    order = prompt_order(algo, len(examples), args.total_steps + 2, args.seed)
    dataset = Dataset.from_dict({"prompt": [format_prompt(examples[i], tok) for i in order], "example_index": order})
    T = TRLTimers()
    eos_id = tok.eos_token_id

    def anypo_task_reward(prompts, completions, completion_ids, example_index, **kwargs):
        """anypo's task reward of each completion, built as anypo's GroupRollout builds its Sample."""
        scores = []
        for text, ids, i in zip(completions, completion_ids, example_index, strict=True):
            truncated = len(ids) >= max_new and ids[-1] != eos_id
            scores.append(reward(examples[i].to_sample(text, len(ids), max_new, truncated)).score)
        T.rewards = list(scores)
        T.prompt_indices = list(example_index[::G])
        return scores

    config = GRPOConfig(
        output_dir=args.tmp,  # the driver removes it
        model_init_kwargs={"dtype": "float32"},
        # batch: 4 prompts x 8 samples = one generation batch = one optimizer step, in micro-batches (8 by default)
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=B * G // args.micro_batch_size,
        num_generations=G,
        num_iterations=1,
        max_completion_length=max_new,
        temperature=W1["temperature"],
        top_p=W1["top_p"],
        top_k=W1["top_k"],
        # loss and optimizer
        beta=args.kl,
        epsilon=W1["clip_eps"],
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=W1["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=W1["betas"][0],
        adam_beta2=W1["betas"][1],
        weight_decay=W1["weight_decay"],
        max_grad_norm=W1["max_grad_norm"],
        # W1 is a float32 CPU workload: TRL would default to bf16 autocast (bf16=None -> True); --trl-bf16 restores it
        bf16=args.trl_bf16,
        # TRL's default (True) recomputes activations in the backward; --trl-no-gradient-checkpointing turns it off
        gradient_checkpointing=not args.trl_no_gradient_checkpointing,
        use_cpu=True,
        # anypo's prompt order (data order only: TRL's sampler without its own shuffle)
        shuffle_dataset=False,
        max_steps=args.total_steps + 1,
        save_strategy="no",
        report_to="none",
    )

    class Driven(TrainerCallback):
        """Blocks before each optimizer step until the driver says ``step``; reports the previous one."""

        pending: dict | None = None

        def on_step_begin(self, a, state, control, **kw):
            self.flush()
            if read_command() != "step":
                raise Quit
            T.reset()
            T.start, T.cpu_start = time.perf_counter(), cpu_s()

        def on_step_end(self, a, state, control, **kw):
            step_s, cpu = time.perf_counter() - T.start, cpu_s() - T.cpu_start
            t = T.t
            self.pending = {
                "generate_s": t["prepare_inputs"] - t["prepare"],
                "prepare_s": t["prepare"],
                "forward_s": t["forward"],
                "backward_s": t["backward"],
                "optimizer_s": time.perf_counter() - T.opt_start if T.opt_start is not None else None,
                "step_s": step_s,
                "cpu_s": cpu,
                "sampling_s": t["sampling"],
                "reward_s": t["reward"],
                "loss_logps_s": t["loss_logps"],
                "completion_tokens": T.tokens,
                "trained_seqs": T.loss_seqs,
                "reward_mean": sum(T.rewards) / len(T.rewards),
                "group_rewards": group_means(T.rewards, G),
                "zero_std_groups": sum(len(set(T.rewards[i : i + G])) == 1 for i in range(0, len(T.rewards), G)),
                "prompt_indices": T.prompt_indices,
                "peak_rss_gb": peak_rss_gb(),
                "global_step": state.global_step,
            }

        def on_train_end(self, a, state, control, **kw):
            self.flush()

        def flush(self):
            if self.pending is not None:
                proto.send("step", lib="trl", step=self.pending.pop("global_step"), **self.pending)
                self.pending = None
            elif T.start is None:
                proto.send(
                    "ready", lib="trl", load_s=time.perf_counter() - t0, versions=versions(VERSIONS), settings=settings
                )

    trainer = GRPOTrainer(
        model=str(models.embedded_dir()),
        reward_funcs=anypo_task_reward,
        args=config,
        train_dataset=dataset,
        callbacks=[Driven()],
    )
    # No special token added twice: TRL tokenizes the plain-text prompt to exactly anypo's prompt ids.
    for i in order[:8]:
        got = trainer.processing_class(text=[format_prompt(examples[i], tok)])["input_ids"][0]
        if list(got) != prompt_ids[i]:
            raise RuntimeError(
                f"TRL tokenizes prompt {i} differently from anypo: {got[:5]}... vs {prompt_ids[i][:5]}..."
            )

    # Phase clocks. _prepare_inputs generates (sampling, rewards, advantages) and runs the no-grad
    # old / reference log-prob passes on the first micro-batch of a step; compute_loss is the loss
    # forward of each micro-batch; accelerator.backward its backward; from _clip_grad_norm to
    # on_step_end: grad clipping, optimizer.step, lr_scheduler.step, zero_grad.
    def on_prepare_inputs(orig):
        def call(*a, **k):
            T.in_prepare = True
            try:
                return orig(*a, **k)
            finally:
                T.in_prepare = False

        return call

    def on_generated(orig):
        def call(*a, **k):
            out = orig(*a, **k)
            T.tokens += int(out["completion_mask"].sum())
            return out

        return call

    def on_loss(orig):
        def call(model, inputs, *a, **k):
            T.loss_seqs += int(inputs["completion_ids"].size(0))
            return orig(model, inputs, *a, **k)

        return call

    def on_clip(orig):
        def call(*a, **k):
            T.opt_start = time.perf_counter()
            return orig(*a, **k)

        return call

    trainer._generate_and_score_completions = on_generated(trainer._generate_and_score_completions)
    T.wrap(trainer, "_prepare_inputs", lambda: "prepare_inputs")
    trainer._prepare_inputs = on_prepare_inputs(trainer._prepare_inputs)
    T.wrap(trainer, "_get_per_token_logps_and_entropies", lambda: "prepare" if T.in_prepare else "loss_logps")
    T.wrap(trainer, "_generate", lambda: "sampling")
    T.wrap(trainer, "_calculate_rewards", lambda: "reward")
    trainer.compute_loss = on_loss(trainer.compute_loss)
    T.wrap(trainer, "compute_loss", lambda: "forward")
    T.wrap(trainer.accelerator, "backward", lambda: "backward")
    trainer._clip_grad_norm = on_clip(trainer._clip_grad_norm)

    a = trainer.args
    settings = {
        "generation_batch_size": a.generation_batch_size,
        "steps_per_generation": a.steps_per_generation,
        "per_device_train_batch_size": a.per_device_train_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps,
        "gradient_checkpointing": a.gradient_checkpointing,
        "gradient_checkpointing_kwargs": a.gradient_checkpointing_kwargs,
        "bf16": a.bf16,
        "optim": str(a.optim),
        "adam_epsilon": a.adam_epsilon,
        "use_bias_correction_kl": a.use_bias_correction_kl,
        "disable_dropout": a.disable_dropout,
        "mask_truncated_completions": a.mask_truncated_completions,
        "seed": a.seed,
        "device": str(a.device),
        "model_dtype": str(trainer.model.dtype),
        "reference": trainer.ref_model is not None,
        "eos_token_ids": trainer.eos_token_ids,
    }
    with contextlib.suppress(Quit):  # the driver's quit, raised between two steps
        trainer.train()


def worker_main(args: argparse.Namespace) -> None:
    proto = Protocol()
    (args.kl,) = args.kl  # a worker runs one KL variant
    args.tmp = args.tmp or tempfile.mkdtemp(prefix=f"grpo-vs-trl-{args.worker}-")  # the driver always gives one
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    (anypo_worker if args.worker == "anypo" else trl_worker)(args, proto)


# ---- driver ----
def micro_batch_size(args: argparse.Namespace, lib: str) -> int:
    trl = getattr(args, "trl_micro_batch_size", None)
    return trl if lib == "trl" and trl else args.micro_batch_size


def start_worker(lib: str, python: str, args: argparse.Namespace, kl: float, log: Path, tmp: Path) -> Worker:
    cmd = [python, str(Path(__file__).resolve()), "--worker", lib, "--kl", str(kl)]
    cmd += ["--max-new-tokens", str(args.max_new_tokens), "--total-steps", str(args.warmup + args.steps)]
    cmd += ["--seed", str(args.seed), "--micro-batch-size", str(micro_batch_size(args, lib))]
    cmd += ["--trl-bf16"] if args.trl_bf16 else []
    cmd += ["--trl-no-gradient-checkpointing"] if args.trl_no_gradient_checkpointing else []
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--anypo-no-onednn"] if args.anypo_no_onednn else []
    cmd += ["--anypo-engine-precision", args.anypo_engine_precision]
    cmd += ["--tmp", str(tmp / lib)]
    return Worker(lib, cmd, W1["threads"], log, close_timeout=120)


def run_variant(kl: float, args: argparse.Namespace, python: str, log_dir: Path) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="grpo-vs-trl-")
    workers = {
        lib: start_worker(lib, python, args, kl, log_dir / f"grpo_vs_trl.{lib}.kl{kl:g}.log", Path(tmp.name))
        for lib in LIBS
    }
    try:
        ready = {lib: w.read("ready") for lib, w in workers.items()}
        for lib, r in ready.items():
            shown = {k: v for k, v in r["settings"].items() if k != "algo"}
            print(f"  {lib} ready after {r['load_s']:.1f} s: {json.dumps(shown)}", flush=True)
        records = alternate_steps(
            workers,
            args,
            [k for k, _ in PHASES[:5]],
            {"kl": kl},
            lambda rec, warm: (
                f"  kl {kl:g} {rec['lib']:>5} step {rec['step']}{' (warm-up)' if warm else ''}: "
                f"{rec['step_s']:.2f} s, {rec['completion_tokens']} tokens, reward {rec['reward_mean']:.3f}"
            ),
        )
    finally:
        for w in workers.values():
            w.close()
        tmp.cleanup()
    return {"kl": kl, "ready": ready, "records": records}


def summarize(variant: dict) -> dict:
    out: dict = {}
    for lib in LIBS:
        recs = [r for r in variant["records"] if r["lib"] == lib and not r["warmup"]]
        s = phase_medians(recs, PHASES)
        tokens = sum(r["completion_tokens"] for r in recs)
        s["completion_tokens_median"] = statistics.median(r["completion_tokens"] for r in recs)
        s["tokens_per_s"] = tokens / sum(r["step_s"] for r in recs)
        s["generate_tokens_per_s"] = (
            tokens / sum(r["generate_s"] for r in recs) if all(r.get("generate_s") for r in recs) else None
        )
        s["peak_rss_gb"] = max(r["peak_rss_gb"] for r in recs)
        s |= cpu_shares(recs)
        groups = [g for r in recs for g in r["group_rewards"]]
        s["reward_mean"] = statistics.fmean(groups)
        s["reward_se"] = statistics.stdev(groups) / math.sqrt(len(groups)) if len(groups) > 1 else float("nan")
        s["zero_std_groups"] = sum(r["zero_std_groups"] for r in recs)
        s["groups"] = len(groups)
        s["trained_seqs"] = sorted({r["trained_seqs"] for r in recs})
        s["missing_metrics"] = sorted({m for r in recs for m in r.get("missing_metrics", [])})
        out[lib] = s
    a, t = out["anypo"], out["trl"]
    diff = a["reward_mean"] - t["reward_mean"]
    se = math.hypot(a["reward_se"], t["reward_se"])
    out["reward_diff"], out["reward_se_combined"] = diff, se
    out["reward_within_noise"] = bool(abs(diff) < 2 * se) if math.isfinite(se) else None
    out["ratio"] = a["step_s"] / t["step_s"]
    steps = {lib: [r["prompt_indices"] for r in variant["records"] if r["lib"] == lib] for lib in LIBS}
    out["same_prompts"] = steps["anypo"] == steps["trl"]
    return out


def report(variant: dict, s: dict) -> None:
    a, t = s["anypo"], s["trl"]
    print(f"\nW1, KL {variant['kl']:g}: median over {a['steps']} measured steps (after warm-up), seconds")
    print_phase_table(a, t, PHASES)
    print(
        f"{'completion tokens / step':<30}{fmt(a['completion_tokens_median'], '.0f'):>10}"
        f"{fmt(t['completion_tokens_median'], '.0f'):>10}"
    )
    print(f"{'completion tokens / s (step)':<30}{fmt(a['tokens_per_s'], '.1f'):>10}{fmt(t['tokens_per_s'], '.1f'):>10}")
    print(
        f"{'completion tokens / s (gen.)':<30}{fmt(a['generate_tokens_per_s'], '.1f'):>10}"
        f"{fmt(t['generate_tokens_per_s'], '.1f'):>10}"
    )
    print(f"{'peak RSS (GB)':<30}{a['peak_rss_gb']:>10.2f}{t['peak_rss_gb']:>10.2f}")
    mb = {lib: variant["ready"][lib]["settings"].get(k) for lib, k in zip(LIBS, MICRO_KEYS, strict=True)}
    print(f"{'sequences per pass (micro)':<30}{str(mb['anypo']):>10}{str(mb['trl']):>10}")
    print(f"{'sequences per update':<30}{str(a['trained_seqs']):>10}{str(t['trained_seqs']):>10}")
    print(
        f"{'groups with all-equal rewards':<30}{a['zero_std_groups']:>10}{t['zero_std_groups']:>10}"
        f"   (of {a['groups']}; both train on them)"
    )
    noise = {True: "within noise", False: "NOT within noise", None: "noise unknown (one group)"}
    print(
        f"mean reward: anypo {a['reward_mean']:.3f} +- {a['reward_se']:.3f}, trl {t['reward_mean']:.3f} +- "
        f"{t['reward_se']:.3f} (SE over prompt groups); diff {s['reward_diff']:+.3f}, "
        f"{noise[s['reward_within_noise']]} (2 x combined SE = {2 * s['reward_se_combined']:.3f})"
    )
    print(f"same prompts in every step: {'yes' if s['same_prompts'] else 'NO'}")
    print(
        f"worker CPU s per wall s (median): anypo {a['cpu_per_wall']:.2f}, trl {t['cpu_per_wall']:.2f} "
        f"({W1['threads']} threads each)"
    )
    warn_foreign_cpu(s)
    for lib in LIBS:
        if s[lib]["missing_metrics"]:
            print(f"WARNING: {lib} did not report {', '.join(s[lib]['missing_metrics'])}")
    print(f"ratio anypo/trl step time (KL {variant['kl']:g}): {s['ratio']:.3f}")


def driver(args: argparse.Namespace) -> None:
    python, out = prepare_driver(args)
    print(
        f"W1: {W1['prompts_per_step']} prompts x {W1['samples_per_prompt']} samples, <= {args.max_new_tokens} new "
        f"tokens, micro-batches of {micro_batch_size(args, 'anypo')} (anypo) and {micro_batch_size(args, 'trl')} "
        f"(trl); KL {', '.join(f'{k:g}' for k in args.kl)}; {args.warmup} warm-up + {args.steps} measured steps "
        f"per library, alternating; workers: {python}",
        flush=True,
    )
    machine = machine_record(python, W1["threads"])
    print(machine_line(machine, W1["threads"]), flush=True)
    t0 = time.time()
    variants, summaries = [], []
    for kl in args.kl:
        v = run_variant(kl, args, python, out.parent)
        s = summarize(v)
        v["summary"] = s
        variants.append(v)
        summaries.append(s)
        # Written after every variant, so a long run keeps what it measured.
        data = {
            "workload": W1
            | {
                "max_new_tokens": args.max_new_tokens,
                "micro_batch_size": {lib: micro_batch_size(args, lib) for lib in LIBS},
            },
            "args": vars(args),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
            "machine": machine,
            "wall_s": time.time() - t0,
            "variants": variants,
        }
        out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    for v, s in zip(variants, summaries, strict=True):
        report(v, s)
    print(f"\nraw step records: {out}")
    worst = max(range(len(variants)), key=lambda i: summaries[i]["ratio"])
    if len(variants) > 1:
        print(f"the last line is the worst (largest) ratio over the KL variants: KL {variants[worst]['kl']:g}")
    print(f"ratio anypo/trl step time: {summaries[worst]['ratio']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="measured steps per library and KL variant")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per library, excluded from the statistics")
    ap.add_argument("--kl", type=float, nargs="+", default=[0.0, 0.04], help="KL coefficients, one run each")
    ap.add_argument("--max-new-tokens", type=int, default=W1["max_new_tokens"])
    ap.add_argument(
        "--micro-batch-size",
        type=int,
        default=W1["micro_batch_size"],
        help="sequences per forward/backward pass in both libraries (anypo micro_batch_size, TRL "
        "per_device_train_batch_size with gradient accumulation over the 32); default: anypo's default, 8",
    )
    ap.add_argument("--trl-micro-batch-size", type=int, default=None, help="TRL's alone (default: --micro-batch-size)")
    ap.add_argument(
        "--trl-bf16",
        action="store_true",
        help="TRL with its default bf16 autocast (not W1, which is float32; anypo stays float32)",
    )
    ap.add_argument(
        "--trl-no-gradient-checkpointing",
        action="store_true",
        help="TRL without its default gradient checkpointing (anypo has none by default either)",
    )
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="both libraries under bfloat16 autocast (anypo --precision bf16, TRL bf16=True); not W1, which is float32",
    )
    ap.add_argument(
        "--anypo-no-onednn",
        action="store_true",
        help="anypo with PyTorch's default float32 linear (MKL) instead of oneDNN (ModelConfig.onednn_linear=False)",
    )
    ap.add_argument(
        "--anypo-engine-precision",
        choices=ENGINE_PRECISIONS,
        default="auto",
        help="anypo's sampling matmuls (--engine-precision; auto, the default: bf16 on AMX CPUs; bf16: bfloat16 weight copies, training stays float32)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 warm-up + 1 step, 16 new tokens")
    ap.add_argument("--seed", type=int, default=0, help="anypo's seed and the prompt order of both")
    ap.add_argument("--out", default=str(HERE / "results" / "grpo_vs_trl.json"), help="raw step records (JSON)")
    add_process_args(ap)
    args = ap.parse_args()
    if args.worker:
        worker_main(args)
        return
    if args.quick:
        args.warmup, args.steps, args.max_new_tokens = 1, 1, 16
    args.trl_bf16 = args.trl_bf16 or args.bf16
    if args.steps < 1 or args.warmup < 0:
        ap.error("need --steps >= 1 and --warmup >= 0")
    batch = W1["prompts_per_step"] * W1["samples_per_prompt"]
    for lib in LIBS:
        if micro_batch_size(args, lib) < 1 or batch % micro_batch_size(args, lib):
            ap.error(f"a micro-batch size must divide the {batch} sequences of a step")
    driver(args)


if __name__ == "__main__":
    main()
