"""Generation backends. ``hf`` (default, in-process, CPU or GPU) and ``vllm`` (optional extra)."""

from anypo.engines.base import Engine, Generation, SamplingConfig
from anypo.validate import ENGINE_PRECISIONS

__all__ = [
    "ENGINE_PRECISIONS",
    "Engine",
    "Generation",
    "SamplingConfig",
    "logprobs_exact",
    "make_engine",
    "native_bf16",
    "resolve_engine_precision",
]


def native_bf16() -> bool:
    """Whether this CPU has AMX bfloat16 tiles (``amx_bf16`` in /proc/cpuinfo): the CPUs on which the
    bfloat16 engine was measured faster (W1 decode matmuls 0.28x their float32 time; without native
    bfloat16, on AVX2, 3.4x slower; docs/engines.md). ``ANYPO_NATIVE_BF16=0`` or ``1`` overrides the
    detection (the test suite sets 0, so that its runs sample the same way on every machine)."""
    import os

    forced = os.environ.get("ANYPO_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if forced is not None:
        raise ValueError(f"ANYPO_NATIVE_BF16 must be 0 or 1, got {forced!r}")
    from anypo.runs import cpu_info

    return "amx_bf16" in cpu_info()[1]


def resolve_engine_precision(cfg) -> tuple[str, str]:
    """``(precision, why)``: the hf engine's decode precision for the run ``cfg``.

    ``fp32`` and ``bf16`` stand as given. ``auto`` is bf16 where it pays and applies: the in-process hf
    engine on the CPU (no rollout actors), float32 training (``--precision fp32``) and a CPU with AMX;
    fp32 everywhere else.
    """
    ep = cfg.engine_precision
    if ep != "auto":
        return ep, "set"
    if cfg.engine != "hf" or cfg.dist.backend != "none":
        return "fp32", "auto: not the in-process hf engine"
    if cfg.precision != "fp32":
        return "fp32", f"auto: --precision {cfg.precision} already samples in bfloat16"
    if not native_bf16():
        return "fp32", "auto: this CPU has no AMX bfloat16 units"
    return "bf16", "auto: this CPU has AMX bfloat16 units"


def make_engine(name: str, model, tokenizer, precision: str = "fp32") -> Engine:
    """Build the engine ``name`` around ``model`` (the policy being trained); ``precision`` "bf16": the hf
    engine's decode matmuls in bfloat16 (``HFEngine``)."""
    if name == "hf":
        from anypo.engines.hf import HFEngine

        return HFEngine(model, tokenizer, precision=precision)
    if precision != "fp32":
        raise ValueError(f"engine precision {precision!r} is for the hf engine; the {name} engine has its own dtype")
    if name == "vllm":
        from anypo.engines.vllm import VLLMEngine  # optional extra

        return VLLMEngine(model, tokenizer)
    raise ValueError(f"unknown engine {name!r}; choose 'hf' or 'vllm'")


def logprobs_exact(name: str, sampling: SamplingConfig) -> bool:
    """Whether the engine ``name``, in the policy's dtype, returns the contract's log-probs under
    ``sampling`` (``Engine.logprobs_exact`` of an engine that is not in this process: the rollout actors'
    of a distributed run). hf: always; vllm: without top-k and top-p."""
    if name == "vllm":
        from anypo.engines.vllm import untruncated  # imports no vLLM

        return untruncated(sampling)
    return True
