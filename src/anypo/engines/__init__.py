"""Generation backends. ``hf`` (default, in-process, CPU or GPU) and ``vllm`` (optional extra)."""

from anypo.engines.base import Engine, Generation, SamplingConfig

__all__ = ["Engine", "Generation", "SamplingConfig", "make_engine"]


def make_engine(name: str, model, tokenizer) -> Engine:
    """Build the engine ``name`` around ``model`` (the policy being trained)."""
    if name == "hf":
        from anypo.engines.hf import HFEngine

        return HFEngine(model, tokenizer)
    if name == "vllm":
        from anypo.engines.vllm import VLLMEngine  # optional extra

        return VLLMEngine(model, tokenizer)
    raise ValueError(f"unknown engine {name!r}; choose 'hf' or 'vllm'")
