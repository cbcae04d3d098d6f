"""What W1's step-ratio target asks of anypo's training pass, against what the pass's parts take.

Part 1 (timed here, anypo alone): one real W1 micro-batch, the longest of the first step's four (a
prompt and its 8 sampled responses packed into one sequence), through the policy's forward and
backward, then the same shapes part by part: the body's linears alone (every layer's seven
products, forward and backward, through ``anypo.onednn`` as in the model), the attention alone (the
packed sequence's mask, every layer, forward and backward), the LM head with its fused log-softmax;
what the body's pass takes beyond its linears and attention is element-wise work (norms, rotary,
SiLU, residuals) and autograd. ``--compile-pointwise`` then times the same micro-batch with the
norms, the rotary embedding and SiLU x up compiled by ``torch.compile`` (an experiment; anypo does
not do this).

Part 2 (no timing; from ``grpo_vs_trl.py`` records): for every measured anypo step, the time that
1/4 of the paired TRL step leaves for anypo's forward and backward once its own generation,
preparation and optimizer time are taken out, and the float32 rate the training matmuls (6 FLOP per
parameter per trained token; the prompt counted once per packed micro-batch) would need to fit in
it.

    python benchmarks/w1_train_budget.py --records benchmarks/results/grpo_vs_trl_w1_20261203_auto_run*.json
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from anypo.validate import ENGINE_PRECISIONS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_vs_trl import W1, w1_context  # noqa: E402
from w1_profile import matmul_rate  # noqa: E402


def median_s(fn, repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def capture_micro_batch(engine_precision: str):
    """A built W1 Context and the longest micro-batch its first step trained on."""
    import anypo.train

    ctx = w1_context("w1-budget", 1, engine_precision)
    seen, original = [], anypo.train.response_logprobs

    def capture(model, batch, *a, **k):
        seen.append(batch)
        return original(model, batch, *a, **k)

    anypo.train.response_logprobs = capture
    try:
        ctx.step(1)
    finally:
        anypo.train.response_logprobs = original
    return ctx, max(seen, key=lambda b: int(b.response_mask.sum()))


def part1(args) -> dict:
    from anypo import onednn
    from anypo.ops import linear_logprobs
    from anypo.policy import pack_by_prompt, response_hidden, response_logprobs

    ctx, micro = capture_micro_batch(args.engine_precision)
    model, r = ctx.model, args.repeats
    cfg = model.config
    layers, hid, inter = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or hid // heads
    pk = pack_by_prompt(micro)
    seq, resp = int(pk.ids.shape[1]), int(micro.response_mask.sum())

    def whole():
        out = response_logprobs(model, micro, 1.0, entropy=True)
        out.logprobs.sum().backward()
        model.zero_grad(set_to_none=True)

    def body_fb():
        h, _ = response_hidden(model, micro)
        h.sum().backward()
        model.zero_grad(set_to_none=True)

    def body_f():
        with torch.no_grad():
            response_hidden(model, micro)

    with torch.no_grad():
        h, head = response_hidden(model, micro)
    h = h.detach().requires_grad_(True)
    targets = micro.response_ids[micro.response_mask.bool()]

    def head_fb():
        lp, _ = linear_logprobs(h, head.weight, head.bias, targets, 1.0, entropy=True)
        lp.sum().backward()
        model.zero_grad(set_to_none=True)
        h.grad = None

    # one layer's linears: q, k, v, o from the hidden size, gate and up to the MLP width, down back
    shapes = [(heads * head_dim, hid), (kv_heads * head_dim, hid), (kv_heads * head_dim, hid),
              (hid, heads * head_dim), (inter, hid), (inter, hid), (hid, inter)]  # fmt: skip
    ws = [torch.randn(o, i, requires_grad=True) for o, i in shapes]
    xs = {i: torch.randn(seq, i, requires_grad=True) for i in {i for _, i in shapes}}

    def linears_fb():
        for _ in range(layers):
            sum(onednn.linear(xs[w.shape[1]], w).sum() for w in ws).backward()
            for t in (*ws, *xs.values()):
                t.grad = None

    def linears_f():
        with torch.no_grad():
            for _ in range(layers):
                for w in ws:
                    onednn.linear(xs[w.shape[1]], w)

    mask = pk.attention if pk.attention is not None and pk.attention.dim() == 4 else None
    q = torch.randn(1, heads, seq, head_dim, requires_grad=True)
    kv = [torch.randn(1, kv_heads, seq, head_dim, requires_grad=True) for _ in range(2)]

    def attention(grad: bool):
        rep = heads // kv_heads
        with torch.set_grad_enabled(grad):
            for _ in range(layers):
                k, v = (t.repeat_interleave(rep, 1) for t in kv)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
                if grad:
                    o.sum().backward()
        for t in (q, *kv):
            t.grad = None

    n_body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    n_head = head.weight.numel()
    lin_flop = 2 * seq * sum(o * i for o, i in shapes) * layers
    out = {
        "packed_tokens": seq,
        "response_tokens": resp,
        "prompt_tokens": int(micro.prompt_mask[0].sum()),  # the rows share one prompt, packed once
        "whole_fwd_bwd_s": median_s(whole, r),
        "body_fwd_s": median_s(body_f, r),
        "body_fwd_bwd_s": median_s(body_fb, r),
        "head_fwd_bwd_s": median_s(head_fb, r),
        "linears_fwd_s": median_s(linears_f, r),
        "linears_fwd_bwd_s": median_s(linears_fb, r),
        "attention_fwd_s": median_s(lambda: attention(False), r),
        "attention_fwd_bwd_s": median_s(lambda: attention(True), r),
        "linear_flop_fwd": lin_flop,
        "n_body": n_body,
        "n_head": n_head,
        "matmul_rate_gflops": matmul_rate() / 1e9,
    }
    out["elementwise_fwd_bwd_s"] = out["body_fwd_bwd_s"] - out["linears_fwd_bwd_s"] - out["attention_fwd_bwd_s"]
    out["linears_fwd_bwd_gflops"] = 3 * lin_flop / out["linears_fwd_bwd_s"] / 1e9
    out["body_fwd_bwd_gflops"] = 6 * n_body * seq / out["body_fwd_bwd_s"] / 1e9
    if args.compile_pointwise:
        out |= compiled_pointwise(whole, r)
    return out


def compiled_pointwise(whole, repeats: int) -> dict:
    """The whole micro-batch again with RMSNorm, rotary and SiLU x up compiled (Llama modules only)."""
    import transformers.models.llama.modeling_llama as llama

    @torch.compile(dynamic=True)
    def rms(x, w, eps: float):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    @torch.compile(dynamic=True)
    def rope(q, k, cos, sin):
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

        def half(x):
            h = x.shape[-1] // 2
            return torch.cat((-x[..., h:], x[..., :h]), -1)

        return q * cos + half(q) * sin, k * cos + half(k) * sin

    @torch.compile(dynamic=True)
    def silu_mul(g, u):
        return F.silu(g) * u

    llama.LlamaRMSNorm.forward = lambda self, x: rms(x, self.weight, self.variance_epsilon)
    llama.apply_rotary_pos_emb = lambda q, k, cos, sin, unsqueeze_dim=1: rope(q, k, cos, sin)
    llama.LlamaMLP.forward = lambda self, x: self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))
    t = time.perf_counter()
    whole()
    return {"compiled_first_call_s": time.perf_counter() - t, "compiled_whole_fwd_bwd_s": median_s(whole, repeats)}


def part2(paths: list[str], measured: dict) -> list[dict]:
    """Per measured anypo step of each record file: the training budget 1/4 of TRL's step leaves
    (W1's prompts differ by a few tokens; each is counted at the measured micro-batch's length)."""
    rows = []
    prompt, n_body, n_head = measured["prompt_tokens"], measured["n_body"], measured["n_head"]
    per_step_prompts = W1["prompts_per_step"] * (W1["samples_per_prompt"] // W1["micro_batch_size"] or 1)
    for path in paths:
        rec = json.loads(Path(path).read_text())
        for variant in rec["variants"]:
            steps = [x for x in variant["records"] if x.get("kind") == "step" and not x.get("warmup")]
            trl = {x["step"]: x for x in steps if x["lib"] == "trl"}
            for a in (x for x in steps if x["lib"] == "anypo"):
                t = trl.get(a["step"])
                if t is None:
                    continue
                other = a["step_s"] - a["forward_s"] - a["backward_s"]
                budget = 0.25 * t["step_s"] - other
                flop = 6 * n_body * (prompt * per_step_prompts + a["completion_tokens"])
                flop += 6 * n_head * a["completion_tokens"]
                rows.append({
                    "file": Path(path).name, "kl": variant["kl"], "step": a["step"],
                    "trl_step_s": t["step_s"], "anypo_step_s": a["step_s"],
                    "anypo_train_s": a["forward_s"] + a["backward_s"], "anypo_other_s": other,
                    "train_budget_s": budget, "train_tflop": flop / 1e12,
                    "measured_gflops": flop / (a["forward_s"] + a["backward_s"]) / 1e9,
                    "needed_gflops": flop / budget / 1e9 if budget > 0 else float("inf"),
                })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", nargs="*", default=[], help="grpo_vs_trl.py result files (globs allowed)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engine-precision", choices=ENGINE_PRECISIONS, default="auto")
    ap.add_argument(
        "--compile-pointwise", action="store_true", help="also time the micro-batch with compiled pointwise ops"
    )
    ap.add_argument("--out", default=None, help="write both parts here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(W1["threads"])
    measured = m = part1(args)
    print(f"one W1 micro-batch: {m['packed_tokens']} packed tokens, {m['response_tokens']} predicted")
    print(f"  forward + backward, whole        {m['whole_fwd_bwd_s']:.3f} s")
    print(f"  body forward / forward + backward {m['body_fwd_s']:.3f} / {m['body_fwd_bwd_s']:.3f} s "
          f"({m['body_fwd_bwd_gflops']:.0f} GFLOP/s)")  # fmt: skip
    print(f"    linears alone                  {m['linears_fwd_s']:.3f} / {m['linears_fwd_bwd_s']:.3f} s "
          f"({m['linears_fwd_bwd_gflops']:.0f} GFLOP/s)")  # fmt: skip
    print(f"    attention alone                {m['attention_fwd_s']:.3f} / {m['attention_fwd_bwd_s']:.3f} s")
    print(f"    the rest (element-wise)        {m['elementwise_fwd_bwd_s']:.3f} s")
    print(f"  LM head + log-softmax            {m['head_fwd_bwd_s']:.3f} s")
    print(f"  matmul probe                     {m['matmul_rate_gflops']:.0f} GFLOP/s")
    if "compiled_whole_fwd_bwd_s" in m:
        print(f"  compiled pointwise: whole {m['compiled_whole_fwd_bwd_s']:.3f} s "
              f"(first call, compiling, {m['compiled_first_call_s']:.1f} s)")  # fmt: skip
    paths = sorted({p for g in args.records for p in glob.glob(g)})
    rows = part2(paths, measured)
    if rows:
        print("\nper measured step: 1/4 of TRL's step less anypo's generation, preparation and optimizer time")
        print("file | KL | step | TRL s | anypo s | anypo train s | budget s | TFLOP | GFLOP/s now | needed")
        for x in rows:
            print(f"{x['file']} | {x['kl']} | {x['step']} | {x['trl_step_s']:.2f} | {x['anypo_step_s']:.2f} | "
                  f"{x['anypo_train_s']:.2f} | {x['train_budget_s']:.2f} | {x['train_tflop']:.2f} | "
                  f"{x['measured_gflops']:.0f} | {x['needed_gflops']:.0f}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"micro_batch": measured, "steps": rows}, indent=1))


if __name__ == "__main__":
    main()
