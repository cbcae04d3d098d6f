"""Generation time of the W1 workload: ``HFEngine`` vs ``VLLMEngine`` (needs the vllm extra).

W1: the embedded model (SmolLM2-135M-Instruct) in float32 on 2 threads, 4 prompts of the
``addition`` task (chat template, no extra special tokens), 8 samples each, at most 64 new tokens,
temperature 1.0. After one warm-up call per engine, the two engines run alternately (so that machine
noise hits both alike) ``--reps`` times each, with the same seed per repetition. Prints the median
seconds per ``generate`` call, generated tokens per second, and finally
``ratio vllm/hf generate time: X`` (below 1: vLLM is faster).

    python benchmarks/vllm_vs_hf_generate.py --reps 3

vLLM spawns helpers with multiprocessing, so everything runs under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="timed generate calls per engine")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)  # before vLLM starts: its CPU worker disables set_num_threads

    from anypo import models
    from anypo.engines.base import SamplingConfig
    from anypo.engines.hf import HFEngine
    from anypo.engines.vllm import VLLMEngine
    from anypo.tasks import format_prompt, get_task

    tok = models.load_tokenizer()
    model = models.load_model(models.ModelConfig(dtype="float32"))
    model.eval()
    exs = get_task("addition").train_examples(args.prompts)
    prompts = [tok(format_prompt(e, tok), add_special_tokens=False)["input_ids"] for e in exs]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)

    t0 = time.perf_counter()
    engines = {"hf": HFEngine(model, tok), "vllm": VLLMEngine(model, tok)}
    print(f"vllm engine startup: {time.perf_counter() - t0:.1f} s (threads: {torch.get_num_threads()})")

    def run(name: str, seed: int) -> tuple[float, int]:
        t = time.perf_counter()
        g = engines[name].generate(prompts, args.samples, sampling, seed=seed)
        return time.perf_counter() - t, int(g.response_mask.sum())

    for name in engines:  # warm-up: first-call allocations, lazy imports, kernel selection
        s, n = run(name, seed=10_000)
        print(f"warm-up {name:5s} {s:7.2f} s  {n:5d} tokens")

    times: dict[str, list[float]] = {k: [] for k in engines}
    tokens: dict[str, list[int]] = {k: [] for k in engines}
    for rep in range(args.reps):
        order = list(engines) if rep % 2 == 0 else list(reversed(engines))
        for name in order:
            s, n = run(name, seed=rep)
            times[name].append(s)
            tokens[name].append(n)
            print(f"rep {rep} {name:5s} {s:7.2f} s  {n:5d} tokens  {n / s:7.1f} tok/s")

    print(
        f"\nW1: {args.prompts} prompts x {args.samples} samples, max {args.max_new_tokens} new tokens, "
        f"T=1.0, float32, {args.threads} threads, {args.reps} reps"
    )
    med = {}
    for name in engines:
        med[name] = statistics.median(times[name])
        tps = sum(tokens[name]) / sum(times[name])
        print(
            f"{name:5s} median {med[name]:7.2f} s   {tps:7.1f} generated tok/s   (mean {statistics.mean(tokens[name]):.0f} tokens/call)"
        )
    engines["vllm"].close()
    print(f"ratio vllm/hf generate time: {med['vllm'] / med['hf']:.3f}")


if __name__ == "__main__":
    main()
