import time

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
