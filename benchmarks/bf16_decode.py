"""Would a bfloat16 copy of the weights make decoding faster on this CPU? The matmuls of one decode step.

One decode step of the embedded SmolLM2-135M-Instruct at W1's batch (32 rows) is 30 layers of four
attention projections ([32, 576] x [576, 576] for q and o, [576, 192] for k and v) and three MLP
matmuls ([32, 576] x [576, 1536] twice, [32, 1536] x [1536, 576]), then the 49,152-token head. This
times each shape in float32 through ``anypo.onednn`` (what the hf engine runs) and in bfloat16
through ``torch.nn.functional.linear`` (what a bf16 copy of the model would run), and prints the
CPU's AVX-512 / AMX flags next to them: without AVX-512 BF16 or AMX, bfloat16 has no native dot
product and is converted on the fly.

    .venv/bin/python benchmarks/bf16_decode.py            # nothing else running

The last line is ``ratio bf16/fp32 decode-step matmul time: X`` (X < 1: bf16 is faster).
"""

from __future__ import annotations

import argparse
import platform
import re
import time

import torch
import torch.nn.functional as F

from anypo import onednn
from anypo.runs import cpu_info

H, MLP, KV, V, LAYERS = 576, 1536, 192, 49152, 30  # SmolLM2-135M: hidden, MLP, k/v width, vocabulary, layers
# (out_features, in_features, count per step)
SHAPES = [(H, H, 2 * LAYERS), (KV, H, 2 * LAYERS), (MLP, H, 2 * LAYERS), (H, MLP, LAYERS), (V, H, 1)]


def cpu_flags() -> tuple[str, list[str]]:
    """The CPU's model and its AVX2 / AVX-512 / AMX flags."""
    model, flags = cpu_info()
    return model or platform.processor(), sorted({f for f in flags if re.fullmatch(r"avx512\w*|amx\w*|avx2", f)})


def timed(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32, help="decode rows (W1: 4 prompts x 8 samples)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, flags = cpu_flags()
    print(f"cpu: {model}; flags: {' '.join(flags) or 'none of avx2/avx512/amx'}; torch {torch.__version__}")
    print(f"oneDNN linear available: {onednn.available()}; rows {args.rows}, {args.threads} threads")
    g = torch.Generator().manual_seed(0)
    total = {"fp32": 0.0, "bf16": 0.0}
    print("| shape (rows x in -> out) | per step | fp32 oneDNN ms | bf16 F.linear ms | bf16/fp32 |")
    print("| --- | --- | --- | --- | --- |")
    for out_f, in_f, count in SHAPES:
        x, w = torch.randn(args.rows, in_f, generator=g), torch.randn(out_f, in_f, generator=g) / in_f**0.5
        xb, wb = x.bfloat16(), w.bfloat16()
        t32 = timed(lambda x=x, w=w: onednn.linear(x, w, None), args.reps)
        t16 = timed(lambda xb=xb, wb=wb: F.linear(xb, wb), args.reps)
        total["fp32"] += count * t32
        total["bf16"] += count * t16
        print(f"| {args.rows} x {in_f} -> {out_f} | {count} | {t32 * 1e3:.3f} | {t16 * 1e3:.3f} | {t16 / t32:.2f} |")
    print(f"decode-step matmuls: fp32 {total['fp32'] * 1e3:.1f} ms, bf16 {total['bf16'] * 1e3:.1f} ms")
    print(f"ratio bf16/fp32 decode-step matmul time: {total['bf16'] / total['fp32']:.3f}")


if __name__ == "__main__":
    main()
