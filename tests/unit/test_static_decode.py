"""The preallocated-cache decode loop: the log-prob of every sampled token equals the model's own full
forward pass on the finished sequence (teacher forcing), for Llama and Qwen2 (biased projections),
with left-padded prompts of different lengths and rows finishing at different steps (compaction)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from anypo.engines import static_decode
from anypo.engines.base import SamplingConfig
from anypo.engines.hf import HFEngine
from anypo.models import disable_dropout, tiny_config


def _qwen2():
    torch.manual_seed(0)
    c = tiny_config(vocab_size=49152)
    cfg = Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    model = disable_dropout(Qwen2ForCausalLM(cfg)).eval()
    with torch.no_grad():  # biases of the q/k/v projections nonzero, so the test sees them
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def _teacher_forced(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sampled_logprobs_equal_teacher_forcing_with_rows_ending_early(arch, tiny_model, tokenizer, monkeypatch):
    """12,000 of the 49,152 token ids end a row, so a near-uniform random model ends about a quarter of
    its rows at each step (lengths spread over 1..10): the buffers are compacted at least once, and
    every row's log-probs still equal a full forward pass of the model on its finished sequence."""
    model = tiny_model if arch == "llama" else _qwen2()
    assert static_decode.supports(model)
    engine = HFEngine(model, tokenizer)
    engine.eos_ids = torch.arange(100, 12100)  # ~1/4 of the vocabulary ends a row: lengths spread out
    compactions = []
    select = static_decode.StaticDecoder.select

    def spy(self, keep):
        before = self.k[0].shape[0]
        select(self, keep)
        compactions.append(self.k[0].shape[0] < before)

    monkeypatch.setattr(static_decode.StaticDecoder, "select", spy)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]  # left padding of 4, 0 and 6 columns
    g = engine.generate(prompts, 4, SamplingConfig(temperature=0.8, max_new_tokens=10), seed=1)
    lengths = g.response_mask.sum(1)
    assert any(compactions) and len(set(lengths.tolist())) > 2
    for i in range(len(lengths)):
        L, p = int(lengths[i]), prompts[int(g.prompt_index[i])]
        ref = _teacher_forced(model, p, g.response_ids[i, :L].tolist(), 0.8)
        torch.testing.assert_close(g.logprobs[i, :L], ref, atol=1e-5, rtol=1e-5)


def test_unsupported_models_take_the_cache_path(tokenizer):
    """A GPT-2 model is not a Llama-family one: supports() says so and the engine still samples with
    log-probs equal to teacher forcing (through the model's own forward and cache)."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=49152, n_embd=32, n_layer=1, n_head=2, n_positions=64, eos_token_id=2, pad_token_id=2)
    model = disable_dropout(GPT2LMHeadModel(cfg)).eval()
    assert not static_decode.supports(model)
    g = HFEngine(model, tokenizer).generate([[5, 6, 7]], 2, SamplingConfig(max_new_tokens=5), seed=0)
    for i in range(2):
        L = int(g.response_mask[i].sum())
        ref = _teacher_forced(model, [5, 6, 7], g.response_ids[i, :L].tolist(), 1.0)
        torch.testing.assert_close(g.logprobs[i, :L], ref, atol=1e-5, rtol=1e-5)
