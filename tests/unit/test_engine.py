import pytest
import torch

from anypo.engines.base import SamplingConfig
from anypo.engines.hf import HFEngine, _categorical, _sample


def _prompts(tokenizer):
    texts = ["What is 2+2?", "Name a colour please.", "Hi"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_generate_shapes_and_logprobs_match_teacher_forcing(tiny_model, tokenizer):
    """The engine's log-prob of each sampled token equals log softmax(logits / T) of a full forward pass."""
    eng = HFEngine(tiny_model, tokenizer)
    prompts = _prompts(tokenizer)
    s = SamplingConfig(temperature=0.9, max_new_tokens=12)
    g = eng.generate(prompts, 3, s, seed=0)
    N = 9
    assert g.response_ids.shape[0] == N and g.response_ids.shape == g.logprobs.shape == g.response_mask.shape
    assert g.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i in range(N):
        L = int(g.response_mask[i].sum())
        p = prompts[int(g.prompt_index[i])]
        ids = torch.tensor([p + g.response_ids[i, :L].tolist()])
        with torch.no_grad():
            logits = tiny_model(ids).logits[0, len(p) - 1 : -1] / 0.9
        ref = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(p) :, None]).squeeze(-1)
        torch.testing.assert_close(g.logprobs[i, :L], ref, atol=1e-4, rtol=1e-4)
        assert torch.all(g.logprobs[i, L:] == 0)
        # truncated exactly when no EOS was produced within the limit
        assert bool(g.truncated[i]) == (not bool(torch.isin(g.response_ids[i, :L], eng.eos_ids).any()))


def test_generate_is_reproducible_with_seed(tiny_model, tokenizer):
    eng = HFEngine(tiny_model, tokenizer)
    s = SamplingConfig(max_new_tokens=8)
    a = eng.generate(_prompts(tokenizer), 2, s, seed=3)
    b = eng.generate(_prompts(tokenizer), 2, s, seed=3)
    assert torch.equal(a.response_ids, b.response_ids)


def test_top_k_one_is_greedy():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    tok, lp = _sample(logits, SamplingConfig(top_k=1), torch.Generator().manual_seed(0))
    assert tok.tolist() == [1, 0]
    # log-prob is under the untruncated softmax: log softmax([0.1, 2, -1])[1]
    assert torch.allclose(lp[0], torch.log_softmax(logits[0], -1)[1])


def test_top_p_keeps_smallest_prefix():
    """probs [0.5, 0.3, 0.2]: top_p=0.6 keeps {0, 1} (0.5 < 0.6 <= 0.8); token 2 is never drawn."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(2000, 1)
    tok, _ = _sample(logits, SamplingConfig(top_p=0.6), torch.Generator().manual_seed(0))
    assert set(tok.tolist()) == {0, 1}


def test_categorical_draws_match_probabilities():
    """Inverse-CDF draws: rows [1, 0, 6, 3] (unnormalised: sum 10) and [0, 0, 0, 2] (one token).

    With n = 100,000 draws of row 0, token v appears with probability p_v = [0.1, 0, 0.6, 0.3] and
    its count has standard deviation sqrt(n p (1 - p)) <= sqrt(25,000) = 158: each count must be
    within 5 standard deviations of n p, and the zero-probability token 1 must never appear.
    """
    n = 100_000
    probs = torch.tensor([[1.0, 0.0, 6.0, 3.0], [0.0, 0.0, 0.0, 2.0]]).repeat(n, 1)
    tok = _categorical(probs, torch.Generator().manual_seed(0)).view(n, 2)
    assert torch.all(tok[:, 1] == 3)
    counts = torch.bincount(tok[:, 0], minlength=4).double()
    assert counts[1] == 0
    for v, p in ((0, 0.1), (2, 0.6), (3, 0.3)):
        assert abs(counts[v] - n * p) < 5 * (n * p * (1 - p)) ** 0.5


def test_stop_string_ends_response(tiny_model, tokenizer):
    eng = HFEngine(tiny_model, tokenizer)
    # every decoded piece contains a letter or space, so a stop on " " or "e" is hit fast; instead stop
    # on the first token's own text by generating once and reusing its first piece as the stop string
    g = eng.generate(_prompts(tokenizer)[:1], 1, SamplingConfig(max_new_tokens=10), seed=1)
    first = tokenizer.decode(g.response_ids[0, :1])
    if not first.strip():
        return
    g2 = eng.generate(_prompts(tokenizer)[:1], 1, SamplingConfig(max_new_tokens=10, stop=(first,)), seed=1)
    assert int(g2.response_mask.sum()) == 1 and not bool(g2.truncated[0])


def test_bf16_engine_samples_with_bfloat16_matmuls_and_says_its_logprobs_are_not_exact(tiny_model, tokenizer):
    """``precision="bf16"``: the same sampling loop over bfloat16 copies of the routed linears. Its
    log-probs are those of the bfloat16 forward (so they differ from the float32 teacher-forced ones,
    by more than the float32 engine's 1e-4 and, on this tiny model, by under 0.05 nats), it reports
    ``logprobs_exact`` False so that the trainer recomputes them, and the weights it leaves behind are
    the float32 ones, untouched (no packed copy remains)."""
    from anypo import onednn

    onednn.use_onednn(tiny_model)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    eng = HFEngine(tiny_model, tokenizer, precision="bf16")
    s = SamplingConfig(temperature=1.0, max_new_tokens=10)
    assert eng.logprobs_exact(s) is False and HFEngine(tiny_model, tokenizer).logprobs_exact(s) is True
    prompts = _prompts(tokenizer)
    g = eng.generate(prompts, 2, s, seed=0)
    diffs = []
    for i in range(len(g.response_ids)):
        L = int(g.response_mask[i].sum())
        p = prompts[int(g.prompt_index[i])]
        ids = torch.tensor([p + g.response_ids[i, :L].tolist()])
        with torch.no_grad():
            logits = tiny_model(ids).logits[0, len(p) - 1 : -1]
        ref = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(p) :, None]).squeeze(-1)
        diffs.append((g.logprobs[i, :L] - ref).abs())
    d = torch.cat(diffs)
    if onednn.available():
        assert float(d.max()) > 1e-4  # the bfloat16 products acted
    assert float(d.max()) < 0.05
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())
    assert not any("_anypo_onednn_packed" in m.__dict__ for m in tiny_model.modules())
    with pytest.raises(ValueError, match="precision"):
        HFEngine(tiny_model, tokenizer, precision="fp16")


def _qwen2_tiny():
    """A Qwen2 model of the tiny Llama's sizes: q/k/v projections with biases (random, non-zero)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_static_decoder_samples_what_the_models_own_forward_samples(tiny_model, tokenizer, arch, precision):
    """``StaticDecoder`` (preallocated keys/values, fused q/k/v and gate/up) against the model's own
    forward with a ``DynamicCache``, same seed: prompts of different lengths (left padding), 3 samples
    each, and a seventh of the vocabulary made end-of-sequence so that rows finish at different steps
    and the batch shrinks (``keep``) many times. The two compute the same layers in the same order and
    differ only in the fused matmuls' summation order, so the sampled tokens are the same and their
    log-probs agree to float32 round-off (1e-5; bfloat16 products: 2e-2)."""
    from anypo.engines import static_decode

    model = tiny_model if arch == "llama" else _qwen2_tiny()
    assert static_decode.supports(model) is None
    prompts = _prompts(tokenizer)
    s = SamplingConfig(temperature=1.0, max_new_tokens=16)
    out = {}
    for static in (True, False):
        eng = HFEngine(model, tokenizer, precision=precision, static=static)
        eng.eos_ids = torch.arange(2, 49152, 7)
        out[static] = eng.generate(prompts, 3, s, seed=4)
    a, b = out[True], out[False]
    lengths = a.response_mask.sum(1)
    assert len(set(lengths.tolist())) > 2  # rows did finish at different steps
    if precision == "fp32":
        assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.truncated, b.truncated)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    else:  # a bfloat16 rounding may flip a draw: compare the rows' first tokens, drawn from the prefill
        torch.testing.assert_close(a.logprobs[:, 0], b.logprobs[:, 0], atol=2e-2, rtol=0)


def test_static_decoder_says_what_it_cannot_decode(tiny_model, tokenizer):
    """Architectures other than Llama / Qwen2, and projections that are not plain linears (LoRA), are
    decoded by the model's own forward; the reason is a readable sentence."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from anypo.engines import static_decode

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    assert "gpt2" in static_decode.supports(gpt2)
    g = HFEngine(gpt2, tokenizer).generate(_prompts(tokenizer)[:1], 2, SamplingConfig(max_new_tokens=4), seed=0)
    assert g.response_ids.shape[0] == 2  # the model's own forward decoded it
    import copy

    wrapped = copy.deepcopy(tiny_model)
    wrapped.model.layers[0].self_attn.q_proj = torch.nn.Sequential(wrapped.model.layers[0].self_attn.q_proj)
    assert "nn.Linear" in static_decode.supports(wrapped)


def test_two_level_cdf_draws_across_blocks_and_a_padded_tail():
    """V = 1,000 tokens in blocks of 256 (the last block padded by 24 zero-probability entries):
    mass 0.2 on token 3 (block 0), 0.5 on token 600 (block 2), 0.3 on token 999 (the last real token,
    in the padded block), and 1e-3 of the 0.2 moved to token 255 (a block's last entry). With
    n = 200,000 draws each count is within 5 standard deviations sqrt(n p (1 - p)) of n p, no
    zero-probability token appears, and the returned sum is the row's sum (1 up to float32 round-off)."""
    from anypo.engines.hf import _draw

    n = 200_000
    p = torch.zeros(1000)
    p[3], p[255], p[600], p[999] = 0.199, 0.001, 0.5, 0.3
    tok, total = _draw(p.repeat(n, 1), torch.Generator().manual_seed(1))
    counts = torch.bincount(tok, minlength=1000).double()
    assert set(counts.nonzero().flatten().tolist()) <= {3, 255, 600, 999}
    for v in (3, 255, 600, 999):
        q = float(p[v])
        assert abs(counts[v] - n * q) < 5 * (n * q * (1 - q)) ** 0.5
    torch.testing.assert_close(total, torch.ones(n, dtype=torch.float64), atol=1e-6, rtol=0)


def test_sampled_logprob_is_the_tokens_log_softmax():
    """The untruncated path (one exp, the normaliser from the draw's float64 sum) returns
    log_softmax(logits / T)[token], computed here by torch's own log_softmax, at T = 1 and T = 0.7."""
    logits = torch.randn(64, 3000, generator=torch.Generator().manual_seed(0)) * 4
    for t in (1.0, 0.7):
        tok, lp = _sample(logits, SamplingConfig(temperature=t), torch.Generator().manual_seed(2))
        ref = torch.log_softmax(logits / t, -1).gather(-1, tok[:, None]).squeeze(-1)
        torch.testing.assert_close(lp, ref, atol=2e-6, rtol=0)


def test_fill_from_tail_moves_one_row_per_finished_row():
    """done [F, T, F, T, F, F]: four rows stay (0, 2, 4, 5); places 1 and 3 (finished, before 4) take
    the last rows that stay, 5 then 4, so the order is [0, 5, 2, 4]; nothing finished keeps the
    identity, and a finished tail drops without moving anything."""
    from anypo.engines.hf import _fill_from_tail

    f = lambda *bits: torch.tensor([bool(b) for b in bits])  # noqa: E731
    assert _fill_from_tail(f(0, 1, 0, 1, 0, 0)).tolist() == [0, 5, 2, 4]
    assert _fill_from_tail(f(0, 0, 0)).tolist() == [0, 1, 2]
    assert _fill_from_tail(f(0, 0, 1, 1)).tolist() == [0, 1]
    assert _fill_from_tail(f(1, 1, 0)).tolist() == [2]


def test_auto_engine_precision_is_bf16_only_for_the_in_process_engine_on_an_amx_cpu(monkeypatch):
    """``--engine-precision auto``: bf16 exactly when the hf engine runs in this process, training is
    float32 and /proc/cpuinfo lists ``amx_bf16``; fp32 in every other case; fp32 and bf16 as given."""
    import dataclasses

    from anypo import runs
    from anypo.config import TrainConfig
    from anypo.engines import resolve_engine_precision

    def with_flags(flags):
        monkeypatch.setattr(runs, "cpu_info", lambda: ("some cpu", flags))

    monkeypatch.delenv("ANYPO_NATIVE_BF16")  # the suite's override (conftest): detect from the flags here

    auto = TrainConfig()
    assert auto.engine_precision == "auto"  # the default
    with_flags(["avx512f", "avx512_bf16", "amx_tile", "amx_bf16"])
    assert resolve_engine_precision(auto)[0] == "bf16"
    assert resolve_engine_precision(dataclasses.replace(auto, precision="bf16"))[0] == "fp32"
    assert resolve_engine_precision(dataclasses.replace(auto, engine="vllm"))[0] == "fp32"
    assert (
        resolve_engine_precision(dataclasses.replace(auto, dist=dataclasses.replace(auto.dist, backend="ray")))[0]
        == "fp32"
    )
    assert resolve_engine_precision(dataclasses.replace(auto, engine_precision="fp32"))[0] == "fp32"
    for flags in (["avx2", "fma"], ["avx512f", "avx512_bf16"], []):  # AVX2, AVX-512 BF16 without AMX, unreadable
        with_flags(flags)
        assert resolve_engine_precision(auto)[0] == "fp32"
        assert resolve_engine_precision(dataclasses.replace(auto, engine_precision="bf16"))[0] == "bf16"
    monkeypatch.setenv("ANYPO_NATIVE_BF16", "1")  # the override wins over the flags
    assert resolve_engine_precision(auto)[0] == "bf16"
    monkeypatch.setenv("ANYPO_NATIVE_BF16", "0")
    with_flags(["amx_bf16"])
    assert resolve_engine_precision(auto)[0] == "fp32"
    monkeypatch.setenv("ANYPO_NATIVE_BF16", "yes")
    with pytest.raises(ValueError, match="ANYPO_NATIVE_BF16 must be 0 or 1"):
        resolve_engine_precision(auto)
