"""Generation backends. ``hf`` (default, in-process, CPU or GPU) and ``vllm`` (optional extra)."""

from anypo.engines.base import Engine, Generation, SamplingConfig

__all__ = ["Engine", "Generation", "SamplingConfig", "logprobs_exact", "make_engine"]


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
