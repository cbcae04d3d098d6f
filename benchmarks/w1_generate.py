"""W1's generation phase alone: the hf engine with and without its packed weights, in one process.

One W1 generation call (4 addition prompts x 8 samples, up to 64 new tokens, temperature 1, the
embedded SmolLM2-135M-Instruct in float32, 2 threads) per repeat and variant, the variants
alternating so that a slow minute of the machine hits all of them:

- ``cache``: the model's own forward with a Hugging Face ``DynamicCache``, weights reordered by
  oneDNN on every call (the engine before packed weights);
- ``cache+packed``: the same with the weights packed once per call (``anypo.onednn.packed_weights``),
  the engine for architectures the static decoder does not cover (``HFEngine(static=False)``);
- ``static``: ``anypo.engines.static_decode.StaticDecoder`` (preallocated key/value buffers, fused
  q/k/v and gate/up projections, packed once per call), the engine's default for Llama / Qwen2.

An earlier static variant (preallocated buffers, two-matmul attention, no fused projections) was
measured with this script at commit a21f759 on the AVX2 machine and gained nothing measurable
(benchmarks/README.md); the fused one here gained 12-21% on the AMX machine (docs/engines.md).

For each variant it also reports the engine/learner log-prob difference: the largest and mean
|engine log-prob - log-prob of the model's full forward pass on the finished sequence| over every
sampled token (the learner's number for the same token).

    python benchmarks/w1_generate.py --repeats 3 --out benchmarks/results/w1_generate.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bf16_decode import cpu_flags  # noqa: E402
from grpo_vs_trl import MAX_PROMPT_TOKENS, W1  # noqa: E402

VARIANTS = ("cache", "cache+packed", "static")


@contextlib.contextmanager
def variant(engine, name: str):
    """Set ``engine`` up as the variant ``name`` for the block (static decoder or the model's forward,
    packed weights or not)."""
    from anypo import onednn

    packed, static = onednn.packed_weights, engine.static
    engine.static = name == "static"
    if name == "cache":
        onednn.packed_weights = lambda model, rows, dtype=None: contextlib.nullcontext(0)
    try:
        yield
    finally:
        onednn.packed_weights, engine.static = packed, static


@torch.no_grad()
def learner_gap(model, prompts: list[list[int]], g) -> tuple[float, float]:
    """max and mean |engine log-prob - full-forward log-prob| over the sampled tokens."""
    diffs = []
    for r in range(g.response_ids.shape[0]):
        L = int(g.response_mask[r].sum())
        p = prompts[int(g.prompt_index[r])]
        ids = torch.tensor([p + g.response_ids[r, :L].tolist()])
        logits = model(ids).logits[0, len(p) - 1 : -1].float()
        ref = torch.log_softmax(logits, -1).gather(-1, ids[0, len(p) :, None]).squeeze(-1)
        diffs.append((g.logprobs[r, :L] - ref).abs())
    d = torch.cat(diffs)
    return float(d.max()), float(d.mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--threads", type=int, default=W1["threads"], help="torch threads (W1: 2)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from anypo import models
    from anypo.engines.base import SamplingConfig
    from anypo.engines.hf import HFEngine
    from anypo.tasks import get_task
    from anypo.trainer_setup import tokenize_prompts

    torch.set_num_threads(args.threads)
    tok = models.load_tokenizer()
    model = models.load_model(models.EMBEDDED)
    _, prompt_ids, _ = tokenize_prompts(get_task(W1["task"]).train_examples(), tok, MAX_PROMPT_TOKENS)
    prompts = [list(p) for p in prompt_ids[: W1["prompts_per_step"]]]
    sampling = SamplingConfig(
        temperature=W1["temperature"], top_p=W1["top_p"], top_k=W1["top_k"], max_new_tokens=W1["max_new_tokens"]
    )
    engine = HFEngine(model, tok)
    with variant(engine, "cache"):
        engine.generate(prompts, W1["samples_per_prompt"], sampling, seed=1000)  # warm-up
    records = {v: [] for v in args.variants}
    for rep in range(args.repeats):
        for v in args.variants:
            with variant(engine, v):
                t0 = time.perf_counter()
                g = engine.generate(prompts, W1["samples_per_prompt"], sampling, seed=rep)
                dt = time.perf_counter() - t0
            tokens = int(g.response_mask.sum())
            gap_max, gap_mean = learner_gap(model, prompts, g)
            records[v].append({"seconds": dt, "tokens": tokens, "gap_max": gap_max, "gap_mean": gap_mean})
            print(f"repeat {rep} {v:>14}: {dt:6.2f} s, {tokens} tokens, {tokens / dt:6.1f} tokens/s, "
                  f"engine/learner |dlogp| max {gap_max:.1e} mean {gap_mean:.1e}", flush=True)  # fmt: skip
    print("\nvariant         median s  median tokens/s")
    summary = {}
    for v, rs in records.items():
        s = statistics.median(r["seconds"] for r in rs)
        tps = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        summary[v] = {"median_seconds": s, "median_tokens_per_s": tps}
        print(f"{v:>14}  {s:8.2f}  {tps:8.1f}")
    if args.out:
        cpu, flags = cpu_flags()
        out = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu, "cpu_flags": flags, "python": platform.python_version(), "torch": torch.__version__, "w1": W1,
               "threads": args.threads, "repeats": args.repeats, "records": records, "summary": summary}  # fmt: skip
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
