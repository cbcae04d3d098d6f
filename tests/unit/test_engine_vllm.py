"""VLLMEngine: the HFEngine contract, log-probs equal to the trainer's, weight sync, seeds, LoRA.

Runs only where vLLM is installed (the ``vllm`` extra; ``.venv-vllm`` in this repo); skipped elsewhere.
The engine core runs in this process (no spawned workers), so plain pytest fixtures hold the engines.

The test model is the tiny random Llama with head_dim 64 (vLLM's CPU attention has no kernel for the
default tiny model's head_dim 16). Its config lists a tenth of the vocabulary as EOS ids, so that
responses of a random model end by EOS often enough to exercise both finish paths.

Log-prob tolerance: the engine's log-probs and ``anypo.policy.response_logprobs`` (teacher forcing)
compute the same float32 function with different kernels (vLLM's fused qkv / gate-up GEMMs, its
paged CPU attention, its RMSNorm and rotary ops), so they agree up to float32 round-off accumulated
over the layers. Measured max |diff| over all response tokens: ~1e-6 on the tiny model, 4.7e-5 /
5.6e-5 on the embedded 135M model (T = 1.0 / 0.7, 16 samples x 48 tokens, 426 / 476 tokens) and
4.1e-5 after a weight update. ``ATOL = 5e-4`` leaves a 10x margin over the worst measured value,
while a stale or wrong weight moves log-probs by O(0.1-1) (6.6 max, 0.62 mean after adding N(0, 0.01)
noise to the 135M model's weights), so the tests still separate right from wrong by >1000x.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from anypo.engines.base import Generation, SamplingConfig  # noqa: E402
from anypo.engines.hf import HFEngine  # noqa: E402
from anypo.engines.vllm import VLLMEngine, hf_state_dict  # noqa: E402
from anypo.policy import response_logprobs  # noqa: E402
from anypo.rollout.groups import left_pad  # noqa: E402
from anypo.types import RolloutBatch  # noqa: E402

pytestmark = pytest.mark.vllm

ATOL = 5e-4


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from anypo.models import tiny_config

    cfg = tiny_config()
    cfg.hidden_size, cfg.intermediate_size = 128, 256
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 2, 1, 64
    cfg.eos_token_id = list(range(1000, 1000 + cfg.vocab_size // 10))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config.eos_token_id = cfg.eos_token_id
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    eng = VLLMEngine(model, tokenizer)
    yield eng
    eng.close()


def _prompts(tokenizer) -> list[list[int]]:
    texts = ["What is 2+2?", "Name a colour please.", "Hi"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def teacher_logprobs(model, prompts: list[list[int]], g: Generation, temperature: float) -> torch.Tensor:
    """[N, T] the trainer's log-probs of ``g``'s tokens (one teacher-forced pass, as in training)."""
    pid, pm = left_pad(prompts, 0)
    idx = g.prompt_index
    batch = RolloutBatch(
        response_mask=g.response_mask,
        group_ids=idx,
        rewards=torch.zeros(len(idx)),
        prompt_ids=pid[idx],
        prompt_mask=pm[idx],
        response_ids=g.response_ids,
    )
    with torch.no_grad():
        return response_logprobs(model, batch, temperature).logprobs


def check_contract(g: Generation, B: int, n: int, s: SamplingConfig, eos_ids, pad_id: int) -> None:
    """What ``anypo.engines.base.Generation`` promises, for any engine."""
    N = B * n
    T = g.response_ids.shape[1]
    assert g.prompt_index.tolist() == torch.arange(B).repeat_interleave(n).tolist()
    assert g.response_ids.shape == g.response_mask.shape == g.logprobs.shape == (N, T)
    assert g.truncated.shape == (N,) and g.truncated.dtype == torch.bool
    assert g.response_ids.dtype == torch.long
    assert s.max_new_tokens >= T
    lengths = g.response_mask.sum(1)
    assert int(lengths.max()) == T and bool((lengths >= 1).all())
    eos = torch.as_tensor(list(eos_ids))
    for i in range(N):
        L = int(lengths[i])
        assert g.response_mask[i, :L].eq(1).all() and g.response_mask[i, L:].eq(0).all()  # a prefix of ones
        assert g.response_ids[i, L:].eq(pad_id).all() and g.logprobs[i, L:].eq(0).all()
        assert bool((g.logprobs[i, :L] <= 0).all())
        is_eos = torch.isin(g.response_ids[i, :L], eos)
        assert not bool(is_eos[:-1].any()), "EOS may only be the last generated token"
        if not s.stop:  # truncated exactly when no EOS was produced within the limit
            assert bool(g.truncated[i]) == (not bool(is_eos[-1]))
            if bool(g.truncated[i]):
                assert s.max_new_tokens == L


def test_contract_matches_hf_engine(engine, model, tokenizer):
    prompts, s = _prompts(tokenizer), SamplingConfig(temperature=0.9, max_new_tokens=12)
    hf = HFEngine(model, tokenizer)
    assert engine.eos_ids == hf.eos_ids.tolist() and engine.pad_id == hf.pad_id
    gv = engine.generate(prompts, 4, s, seed=0)
    gh = hf.generate(prompts, 4, s, seed=0)
    for g in (gv, gh):
        check_contract(g, len(prompts), 4, s, engine.eos_ids, engine.pad_id)
    # both finish paths occur (EOS and truncation), so the checks above covered both
    assert gv.truncated.any() and not gv.truncated.all()


def test_logprobs_match_teacher_forcing(engine, model, tokenizer):
    prompts = _prompts(tokenizer)
    for temperature in (1.0, 0.6):
        g = engine.generate(prompts, 3, SamplingConfig(temperature=temperature, max_new_tokens=16), seed=1)
        ref = teacher_logprobs(model, prompts, g, temperature)
        torch.testing.assert_close(g.logprobs, ref, atol=ATOL, rtol=0)


def test_same_seed_same_samples(engine, tokenizer):
    prompts, s = _prompts(tokenizer), SamplingConfig(max_new_tokens=10)
    a = engine.generate(prompts, 3, s, seed=7)
    b = engine.generate(prompts, 3, s, seed=7)
    c = engine.generate(prompts, 3, s, seed=8)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)
    # the n samples of one prompt are not copies of each other
    assert len({tuple(r.tolist()) for r in a.response_ids[:3]}) == 3


def test_stop_string_ends_response_and_is_kept(engine, tokenizer):
    prompts, n = _prompts(tokenizer)[:1], 4
    g = engine.generate(prompts, n, SamplingConfig(max_new_tokens=10), seed=1)
    # stop on the text piece that some row's token t adds, where that piece does not occur earlier
    found = None
    for i in range(n):
        texts = [""] + [tokenizer.decode(g.response_ids[i, : t + 1]) for t in range(int(g.response_mask[i].sum()))]
        for t in range(len(texts) - 1):
            piece = texts[t + 1][len(texts[t]) :]
            if piece.strip() and piece not in texts[t] and "\ufffd" not in texts[t + 1]:
                found = found or (i, t, piece)
    assert found is not None, "no row with a usable stop string"
    i, t, stop = found
    g2 = engine.generate(prompts, n, SamplingConfig(max_new_tokens=10, stop=(stop,)), seed=1)
    assert int(g2.response_mask[i].sum()) == t + 1 and not bool(g2.truncated[i])
    assert tokenizer.decode(g2.response_ids[i, : t + 1]).endswith(stop)  # the stop string is kept
    for r in range(n):  # same seed: every row is the unstopped row, cut at its first stop string
        L1, L2 = int(g.response_mask[r].sum()), int(g2.response_mask[r].sum())
        assert torch.equal(g2.response_ids[r, :L2], g.response_ids[r, :L2])
        if L2 < L1:
            assert stop in tokenizer.decode(g2.response_ids[r, :L2])
            assert stop not in tokenizer.decode(g2.response_ids[r, : L2 - 1])


def _perturb(model, scale: float) -> None:
    """Add seeded Gaussian noise of std ``scale`` to every parameter (the policy "moves")."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def test_load_weights_syncs_in_place(engine, model, tokenizer):
    """After the policy's weights change, vLLM samples and scores with the new ones."""
    prompts, s = _prompts(tokenizer), SamplingConfig(max_new_tokens=12)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        _perturb(model, 0.5)
        engine.load_weights(model.state_dict())
        g = engine.generate(prompts, 3, s, seed=2)
        torch.testing.assert_close(g.logprobs, teacher_logprobs(model, prompts, g, 1.0), atol=ATOL, rtol=0)
        # ... and not with the old ones
        with torch.no_grad():
            model.load_state_dict(old)
        stale = (g.logprobs - teacher_logprobs(model, prompts, g, 1.0)).abs().max()
        assert stale > 100 * ATOL
    finally:
        with torch.no_grad():
            model.load_state_dict(old)
        engine.load_weights(model.state_dict())
    g = engine.generate(prompts, 3, s, seed=2)
    torch.testing.assert_close(g.logprobs, teacher_logprobs(model, prompts, g, 1.0), atol=ATOL, rtol=0)


def test_top_k_is_flagged_and_uses_truncated_distribution(engine, model, tokenizer):
    """Documented difference: with top-k, vLLM's log-probs are of the renormalised top-k distribution,
    and ``logprobs_exact`` says so (the trainer then recomputes them)."""
    prompts = _prompts(tokenizer)
    assert engine.logprobs_exact(SamplingConfig()) and engine.logprobs_exact(SamplingConfig(temperature=0.7))
    assert not engine.logprobs_exact(SamplingConfig(top_k=5))
    assert not engine.logprobs_exact(SamplingConfig(top_p=0.9))
    g = engine.generate(prompts, 2, SamplingConfig(top_k=5, max_new_tokens=6), seed=3)
    ref = teacher_logprobs(model, prompts, g, 1.0)
    mask = g.response_mask.bool()
    assert bool((g.logprobs[mask] > ref[mask] + 1.0).all())  # 5 of 49152 near-uniform tokens kept
    assert bool((g.logprobs[mask] >= -torch.log(torch.tensor(5.0)) - 1.0).all())


def test_lora_policy_is_merged(tokenizer):
    """A peft LoRA policy: startup saves it merged, load_weights merges W + scale * B @ A."""
    peft = pytest.importorskip("peft")
    from anypo.models import is_lora

    lora = peft.get_peft_model(
        _tiny_model(seed=1), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    assert is_lora(lora)

    def perturb_adapters(scale: float) -> None:  # lora_B starts at 0: make the adapters matter
        gen = torch.Generator().manual_seed(int(scale * 100))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)

    perturb_adapters(0.3)
    merged = hf_state_dict(lora.state_dict(), lora)
    assert not any("lora_" in k or "base_layer" in k or k.startswith("base_model") for k in merged)
    prompts, s = _prompts(tokenizer), SamplingConfig(max_new_tokens=10)
    with VLLMEngine(lora, tokenizer) as eng:
        g = eng.generate(prompts, 2, s, seed=4)
        torch.testing.assert_close(g.logprobs, teacher_logprobs(lora, prompts, g, 1.0), atol=ATOL, rtol=0)
        perturb_adapters(0.6)
        eng.load_weights(lora.state_dict())
        g = eng.generate(prompts, 2, s, seed=4)
        torch.testing.assert_close(g.logprobs, teacher_logprobs(lora, prompts, g, 1.0), atol=ATOL, rtol=0)


def test_make_engine_builds_vllm(model, tokenizer):
    from anypo.engines import make_engine

    with make_engine("vllm", model, tokenizer) as eng:
        assert isinstance(eng, VLLMEngine)


@pytest.mark.slow
def test_embedded_model_logprobs_and_weight_sync():
    """The 135M model (loaded by vLLM from its cache directory, then synced): the measured tolerance."""
    from anypo import models
    from anypo.tasks import format_prompt, get_task

    tok = models.load_tokenizer()
    model = models.load_model().eval()
    prompts = [
        tok(format_prompt(e, tok), add_special_tokens=False)["input_ids"]
        for e in get_task("addition").train_examples(2)
    ]
    s = SamplingConfig(temperature=0.8, max_new_tokens=24)
    with VLLMEngine(model, tok) as eng:
        assert eng._tmpdir is None  # reused the model's own directory
        g = eng.generate(prompts, 2, s, seed=0)
        check_contract(g, 2, 2, s, eng.eos_ids, eng.pad_id)
        torch.testing.assert_close(g.logprobs, teacher_logprobs(model, prompts, g, 0.8), atol=ATOL, rtol=0)
        _perturb(model, 0.01)
        eng.load_weights(model.state_dict())
        g = eng.generate(prompts, 2, s, seed=0)
        torch.testing.assert_close(g.logprobs, teacher_logprobs(model, prompts, g, 0.8), atol=ATOL, rtol=0)
