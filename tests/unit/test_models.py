import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch

from anypo import models


def test_tiny_model_is_seeded_and_small():
    a, b = models.load_model("tiny", seed=0), models.load_model("tiny", seed=0)
    c = models.load_model("tiny", seed=1)
    pa, pc = dict(a.named_parameters()), dict(c.named_parameters())
    assert all(torch.equal(p, dict(b.named_parameters())[k]) for k, p in pa.items())
    assert not torch.equal(pa["model.layers.0.self_attn.q_proj.weight"], pc["model.layers.0.self_attn.q_proj.weight"])
    assert sum(p.numel() for p in a.parameters()) < 5_000_000


def test_unknown_model_offline_names_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="smollm2-135m-instruct"):
        models.resolve("someone/does-not-exist")


def test_lora_wraps_and_freezes_base():
    m = models.load_model(models.ModelConfig(name="tiny", lora_rank=4))
    assert models.is_lora(m)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.slow
def test_embedded_model_loads_from_cache_and_generates():
    """The embedded SmolLM2-135M-Instruct: converted once from GGUF, then loaded from safetensors."""
    models.embedded_dir()  # convert if needed
    t = time.perf_counter()
    model = models.load_model(models.EMBEDDED)
    assert time.perf_counter() - t < 30
    tok = models.load_tokenizer(models.EMBEDDED)
    assert model.config.vocab_size == 49152 and next(model.parameters()).dtype == torch.float32
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 3+4?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    new = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(out[0]) > ids["input_ids"].shape[1] and new.strip()


# ---- embedded-model cache: keyed by content, safe under concurrent first loads (issue 10, item 9) ----


def test_cache_key_depends_on_gguf_bytes_and_transformers_not_on_path(tmp_path, monkeypatch):
    """Two copies of the same bytes in different places (two virtual environments) share one cache
    entry; other bytes, or another transformers version (another converter), get their own."""
    import transformers

    monkeypatch.setenv("ANYPO_CACHE", str(tmp_path / "cache"))
    payload = b"GGUF" + bytes(range(256)) * 100
    a, b, c = tmp_path / "venv1" / "m.gguf", tmp_path / "venv2" / "site" / "m.gguf", tmp_path / "other.gguf"
    for path, data in ((a, payload), (b, payload), (c, payload[:-1] + b"x")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    name = models.embedded_cache_name(a)
    assert models.embedded_cache_name(b) == name
    assert models.embedded_cache_name(c) != name
    assert hashlib.sha256(payload).hexdigest()[:16] in name  # the key is the content hash, computed here independently
    monkeypatch.setattr(transformers, "__version__", "0.0.0-other")
    assert models.embedded_cache_name(a) != name


def test_file_digest_is_memoised_by_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYPO_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"abc" * 1000)
    calls = []
    real = hashlib.sha256

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(models.hashlib, "sha256", counting)
    first = models.file_digest(path)
    assert first == real(b"abc" * 1000).hexdigest() and len(calls) == 1
    assert models.file_digest(path) == first and len(calls) == 1  # read from the sidecar memo
    path.write_bytes(b"abd" * 1000)  # same size, new content and mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert models.file_digest(path) == real(b"abd" * 1000).hexdigest() and len(calls) == 2


def _convert_in_child(root: str, gguf: str, barrier, results) -> None:
    """One process's first load of the embedded model, once with file locks and once without, into a
    fresh cache each time. The 10 s conversion is replaced by a fake that writes the same kind of files
    and stays inside the conversion long enough for the other process to arrive (both processes import
    torch once for the two scenarios, which is most of the test's time)."""
    from anypo import models as m

    real_exclusive = m._exclusive
    m.gguf_path = lambda: Path(gguf)
    for use_lock in (True, False):
        os.environ["ANYPO_CACHE"] = str(Path(root) / f"lock={use_lock}")
        # without locks (a file system that has none) both convert and the rename decides
        m._exclusive = real_exclusive if use_lock else (lambda path: contextlib.nullcontext())
        converted = []

        def fake_convert(src: Path, out: Path, converted=converted) -> None:
            converted.append(os.getpid())
            (out / "model.safetensors").write_bytes(src.read_bytes())
            time.sleep(1.0)  # the other process reaches the conversion meanwhile (or waits on the lock)
            (out / "config.json").write_text(json.dumps({"writer": os.getpid()}))

        m._convert_gguf = fake_convert
        barrier.wait()
        try:
            target = m.embedded_dir()
            writer = json.loads((target / "config.json").read_text())["writer"]
            results.put((use_lock, os.getpid(), str(target), writer, len(converted), None))
        except BaseException as e:  # report it, so that the parent's assertion shows it
            results.put((use_lock, os.getpid(), None, None, len(converted), repr(e)))


def test_concurrent_first_loads_share_one_complete_cache(tmp_path):
    """Two processes load the embedded model for the first time at once. Before the fix the second to
    finish its conversion got OSError [Errno 39] (Directory not empty) from os.replace."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF fake weights")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_convert_in_child, args=(str(tmp_path), str(gguf), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in range(4)]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    for use_lock in (True, False):
        rows = [r for r in out if r[0] == use_lock]
        assert [r[-1] for r in rows] == [None, None], rows
        (_, pid_a, dir_a, writer_a, n_a, _), (_, pid_b, dir_b, writer_b, n_b, _) = rows
        assert dir_a == dir_b and writer_a == writer_b in {pid_a, pid_b}  # both read the one directory in place
        assert n_a + n_b == (1 if use_lock else 2)  # with the lock the second waits and converts nothing
        assert (Path(dir_a) / "model.safetensors").read_bytes() == gguf.read_bytes()
        assert Path(dir_a).stat().st_mode & 0o777 == 0o755
        assert not [p for p in Path(dir_a).parent.iterdir() if ".tmp-" in p.name]  # the loser's copy is gone


# ---- dropout is disabled on load (issue 10, item 8) ----


def _dropout_models(tmp_path) -> dict[str, Path]:
    """Two tiny models saved with dropout 0.5: Llama (functional attention dropout) and GPT-2 (nn.Dropout)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    cfgs = {
        "llama": models.tiny_config(vocab_size=128),
        "gpt2": GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2),
    }
    cfgs["llama"].attention_dropout = 0.5
    cfgs["gpt2"].resid_pdrop = cfgs["gpt2"].embd_pdrop = cfgs["gpt2"].attn_pdrop = 0.5
    out = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        out[name] = tmp_path / name
        model.save_pretrained(out[name])
    return out


def _two_train_passes(model) -> tuple[torch.Tensor, torch.Tensor]:
    model.train()
    ids = torch.arange(1, 17).view(2, 8)
    return model(ids).logits, model(ids).logits


def test_dropout_is_disabled_on_load(tmp_path):
    from transformers import AutoModelForCausalLM

    for name, path in _dropout_models(tmp_path).items():
        control = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
        a, b = _two_train_passes(control)
        assert not torch.equal(a, b), f"{name}: the control has no active dropout; the test would prove nothing"
        model = models.load_model(models.ModelConfig(name=str(path), onednn_linear=False))
        a, b = _two_train_passes(model)
        assert torch.equal(a, b), name
        assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p != 0]
        rates = {k: v for k, v in model.config.to_dict().items() if "dropout" in k or k.endswith("pdrop")}
        assert rates and all(v == 0 for v in rates.values()), rates


def test_a_cached_hub_model_resolves_offline(tmp_path, monkeypatch):
    """Offline, a hub id resolves when the Hugging Face cache holds it (the validator's warning says so)."""
    import huggingface_hub.constants

    from anypo.validate import train_config_problems

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        models.resolve("someone/cached-model")
    repo = tmp_path / "models--someone--cached-model"  # the hub cache layout: refs/main -> snapshots/<rev>/
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    assert models.hub_cached("someone/cached-model")
    assert models.resolve("someone/cached-model") == "someone/cached-model"
    from anypo.config import TrainConfig

    assert train_config_problems(TrainConfig(model=models.ModelConfig(name="someone/cached-model"))) == []


def test_load_tokenizer_returns_independent_copies_that_encode_alike():
    """The second load of a tokenizer is a copy of the first parsed one: same ids for the same text,
    left padding, and a change made by one caller (padding side, pad token) does not reach another."""
    a = models.load_tokenizer(models.TINY)
    b = models.load_tokenizer(models.EMBEDDED)  # tiny uses the embedded model's tokenizer
    assert a is not b
    text = "What is 12 + 30? <answer>42</answer>"
    assert a(text)["input_ids"] == b(text)["input_ids"]
    assert a.padding_side == b.padding_side == "left" and a.pad_token is not None
    a.padding_side, a.pad_token = "right", a.bos_token or "<|endoftext|>"
    c = models.load_tokenizer(models.EMBEDDED)
    assert c.padding_side == "left" and c.pad_token == b.pad_token
