"""The trainer's forward pass: response log-probs, trimmed length-bucketed micro-batches."""

import pytest
import torch

from anypo.policy import batched_logprobs, micro_batches, pack_by_prompt, response_hidden, response_logprobs
from anypo.registry import get
from anypo.rollout.groups import left_pad
from anypo.types import RolloutBatch


def _batch(tokenizer, seed=0):
    """3 prompts of different lengths x 2 responses of lengths 1..6, right-padded to T=8."""
    g = torch.Generator().manual_seed(seed)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    pid, pm = left_pad(prompts, tokenizer.pad_token_id)
    pid, pm = pid.repeat_interleave(2, 0), pm.repeat_interleave(2, 0)
    lengths = torch.tensor([3, 6, 1, 4, 2, 5])
    T = 8
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    resp = torch.randint(20, 1000, (6, T), generator=g) * mask + tokenizer.pad_token_id * (1 - mask)
    return RolloutBatch(
        response_mask=mask,
        group_ids=torch.arange(3).repeat_interleave(2),
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        prompt_ids=pid,
        prompt_mask=pm,
        response_ids=resp,
    )


def _teacher_forced(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)


def test_response_logprobs_equal_unpadded_teacher_forcing(tiny_model, tokenizer):
    """Padding (prompt left, response right) must not change any real token's log-prob."""
    b = _batch(tokenizer)
    with torch.no_grad():
        lp = response_logprobs(tiny_model, b).logprobs
    for i in range(b.num_seqs):
        prompt = b.prompt_ids[i][b.prompt_mask[i].bool()].tolist()
        L = int(b.response_mask[i].sum())
        ref = _teacher_forced(tiny_model, prompt, b.response_ids[i, :L].tolist())
        torch.testing.assert_close(lp[i, :L], ref, atol=2e-5, rtol=1e-5)
        assert torch.all(lp[i, L:] == 0)


def test_micro_batches_are_trimmed_and_cover_every_row(tokenizer):
    b = _batch(tokenizer)
    parts = micro_batches(b, 4)
    rows = torch.cat([idx for idx, _ in parts]).sort().values
    assert rows.tolist() == list(range(6))
    for idx, mb in parts:
        assert mb.response_mask.shape[1] == int(b.response_mask[idx].sum(1).max())
        assert mb.loss_scale.num_tokens == float(b.response_mask.sum()) and mb.loss_scale.norm_length == 8.0


def test_batched_logprobs_match_full_batch(tiny_model, tokenizer):
    b = _batch(tokenizer)
    with torch.no_grad():
        full = response_logprobs(tiny_model, b).logprobs
    torch.testing.assert_close(batched_logprobs(tiny_model, b, 1.0, 2), full, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
)
def test_trimmed_micro_batch_losses_sum_to_full_loss(tiny_model, tokenizer, aggregation):
    """Sum over trimmed micro-batches of ppo_clip (+ advantages from grpo) == loss on the whole batch,
    and the gradients on the model's parameters agree."""
    b = _batch(tokenizer)
    with torch.no_grad():
        b.old_logprobs = response_logprobs(tiny_model, b).logprobs + 0.05 * b.mask
    adv_fn, AdvCfg = get("advantage", "grpo")
    b.advantages = adv_fn(b, AdvCfg())
    loss_fn, Cfg = get("policy_loss", "ppo_clip")
    cfg = Cfg(aggregation=aggregation)
    params = [p for p in tiny_model.parameters() if p.requires_grad]

    tiny_model.zero_grad()
    full = loss_fn(response_logprobs(tiny_model, b), b, cfg).loss
    full.backward()
    g_full = [p.grad.clone() for p in params]
    tiny_model.zero_grad()
    total = 0.0
    for _, mb in micro_batches(b, 4):
        part = loss_fn(response_logprobs(tiny_model, mb), mb, cfg).loss
        part.backward()
        total += float(part.detach())
    assert total == pytest.approx(float(full.detach()), rel=1e-5, abs=1e-6)  # float32 sums of O(1) terms
    for a, c in zip(g_full, [p.grad for p in params], strict=True):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-4)
    tiny_model.zero_grad()


def test_packed_pass_equals_padded_pass(tiny_model, tokenizer):
    """Packing the rows of a prompt into one sequence (block attention mask, the prompt run once) is
    the same function as one padded row per sequence: log-probs, entropy and the gradient of a loss
    on every parameter must agree (the prompt's gradient is the sum over the rows that share it)."""
    b = _batch(tokenizer)
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    weights = torch.linspace(-1, 1, b.response_mask.numel()).view_as(b.mask)
    results = []
    for pack in (True, False):
        tiny_model.zero_grad()
        out = response_logprobs(tiny_model, b, temperature=0.8, entropy=True, pack=pack)
        (out.logprobs * weights).sum().backward()
        results.append((out.logprobs.detach(), out.entropy.detach(), [p.grad.clone() for p in params]))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    # the tied embedding's lookup gradient is sparse in the packed path, but is summed into the
    # head's dense gradient: the optimizer sees dense gradients only
    assert tiny_model.get_input_embeddings().weight is tiny_model.get_output_embeddings().weight
    assert all(g.layout == torch.strided for g in g_a)
    torch.testing.assert_close(lp_a, lp_b, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent_a, ent_b, atol=2e-5, rtol=1e-5)
    for a, c in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    tiny_model.zero_grad()


def test_packed_gradients_accumulate_over_micro_batches(tiny_model, tokenizer):
    """Two backward passes into the same ``.grad`` (gradient accumulation) give twice one pass, for
    every parameter, the tied embedding included (its sparse lookup gradient is added in place)."""
    b = _batch(tokenizer)
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    tiny_model.zero_grad()
    response_logprobs(tiny_model, b).logprobs.sum().backward()
    once = [p.grad.clone() for p in params]
    response_logprobs(tiny_model, b).logprobs.sum().backward()
    for p, g in zip(params, once, strict=True):
        assert p.grad.layout == torch.strided
        torch.testing.assert_close(p.grad, 2 * g)
    tiny_model.zero_grad()


def test_repeated_prompt_states_get_their_gradients_summed_in_index_order(tiny_model, tokenizer):
    """The last prompt position predicts the first token of every response of its prompt, so the
    packed pass gathers that hidden state once per response. Its gradient must be the sum of those
    rows' gradients added in a fixed order. The gather is ``index_select``, whose backward adds the
    rows in index order; advanced indexing (``h[source]``) backs up through ``index_put_`` with
    accumulate, which on CPU adds repeated rows in a thread-timing-dependent order (on a W1 micro-batch,
    1 pass in about 6 identical ones gave different gradient bits, so runs with one seed diverged).
    Expected: the gradient scattered by hand, one gathered row after the other."""
    b = _batch(tokenizer)
    pk = pack_by_prompt(b)
    assert pk.source.numel() > pk.source.unique().numel()  # the case under test: repeated rows
    seen = {}

    def keep(module, args, out):
        out.retain_grad()
        seen["hidden"] = out

    handle = tiny_model.model.norm.register_forward_hook(keep)
    try:
        h, _ = response_hidden(tiny_model, b)
    finally:
        handle.remove()
    assert type(h.grad_fn).__name__ == "IndexSelectBackward0"
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(0))
    h.backward(g)
    flat = seen["hidden"].grad.flatten(0, 1)
    expected = torch.zeros_like(flat)
    for i, row in enumerate(pk.source.tolist()):  # sequential float32 sums, in index order
        expected[row] += g[i]
    assert torch.equal(flat, expected)
    tiny_model.zero_grad()


def test_packed_materialised_logits_path_matches_fused(tiny_model, tokenizer):
    """``logits=True`` (parts that need [N, T, V]) takes the materialised head; log-probs agree with
    the fused chunked head, and the returned logits reproduce them through a log-softmax."""
    b = _batch(tokenizer)
    with torch.no_grad():
        fused = response_logprobs(tiny_model, b, temperature=0.7).logprobs
        full = response_logprobs(tiny_model, b, temperature=0.7, logits=True)
    torch.testing.assert_close(full.logprobs, fused, atol=2e-5, rtol=1e-5)
    again = torch.log_softmax(full.logits, -1).gather(-1, b.response_ids[..., None]).squeeze(-1) * b.mask
    torch.testing.assert_close(again, fused, atol=2e-5, rtol=1e-5)


def test_pack_by_prompt_layout_by_hand():
    """Rows 0 and 1 share prompt [5, 6] (responses [7, 8] and [9]); row 2 has prompt [3] (response [4, 4]).

    Packed row of prompt [5, 6]: ids [5, 6, 7, 8, 9], positions [0, 1, 2, 3, 2] (row 1's response
    starts again right after the prompt), segments [0, 0, 1, 1, 2]. Token 9 (index 4) may attend to
    the prompt (0, 1) and itself, not to row 0's response (2, 3). Predictions: row 0's tokens 7, 8
    come from indices 1 (last prompt token) and 2; row 1's token 9 from index 1.
    """
    pad = 0
    b = RolloutBatch(
        response_mask=torch.tensor([[1, 1], [1, 0], [1, 1]]),
        group_ids=torch.tensor([0, 0, 1]),
        rewards=torch.zeros(3),
        prompt_ids=torch.tensor([[5, 6], [5, 6], [pad, 3]]),
        prompt_mask=torch.tensor([[1, 1], [1, 1], [0, 1]]),
        response_ids=torch.tensor([[7, 8], [9, pad], [4, 4]]),
    )
    pk = pack_by_prompt(b)
    L = pk.ids.shape[1]
    assert L == 5
    r = [i for i in range(2) if pk.ids[i, 0] == 5][0]  # the packed row of prompt [5, 6]
    assert pk.ids[r].tolist() == [5, 6, 7, 8, 9]
    assert pk.positions[r].tolist() == [0, 1, 2, 3, 2]
    assert pk.attention[r, 0, 4].tolist() == [True, True, False, False, True]
    assert pk.attention[r, 0, 3].tolist() == [True, True, True, True, False]
    o = 1 - r  # prompt [3]: ids [3, 4, 4] then two padding slots that attend only to themselves
    assert pk.ids[o, :3].tolist() == [3, 4, 4] and pk.positions[o, :3].tolist() == [0, 1, 2]
    assert pk.attention[o, 0, 4].tolist() == [False, False, False, False, True]
    assert not pk.attention[o, 0, :3, 3:].any()  # real tokens never see padding
    assert pk.source.tolist() == [r * L + 1, r * L + 2, r * L + 1, o * L + 0, o * L + 1]


def test_packed_keeps_unmasked_tool_tokens_as_context(tiny_model, tokenizer):
    """A response token with mask 0 inside a response (tool output) is context, not a loss target:
    the masked tokens after it get the log-prob that teacher forcing on the whole sequence gives."""
    prompt, resp = [5, 6, 7], [30, 31, 32, 33]
    b = RolloutBatch(
        response_mask=torch.tensor([[1, 0, 0, 1]]),
        group_ids=torch.tensor([0]),
        rewards=torch.zeros(1),
        prompt_ids=torch.tensor([prompt]),
        prompt_mask=torch.ones(1, 3, dtype=torch.long),
        response_ids=torch.tensor([resp]),
    )
    with torch.no_grad():
        lp = response_logprobs(tiny_model, b).logprobs[0]
    ref = _teacher_forced(tiny_model, prompt, resp)
    torch.testing.assert_close(lp[[0, 3]], ref[[0, 3]], atol=2e-5, rtol=1e-5)
    assert lp[1] == 0 and lp[2] == 0


def test_micro_batches_keep_groups_together(tokenizer):
    b = _batch(tokenizer)  # 3 groups of 2 rows
    for _, mb in micro_batches(b, 2):
        assert mb.group_ids.unique().numel() == 1


def test_offloaded_reference_equals_in_memory_copy_and_frees_its_weights(tiny_model, tokenizer, tmp_path):
    """The offloaded reference (weights in a file, read per pass) gives the log-probs of the initial
    weights even after the policy changed, and holds no weight memory between passes."""
    from anypo.policy import Reference

    b = _batch(tokenizer)
    in_memory = Reference(tiny_model)
    offloaded = Reference(tiny_model, tmp_path / "ref.safetensors")
    with torch.no_grad():
        before = response_logprobs(tiny_model, b).logprobs
        saved = [p.clone() for p in tiny_model.parameters()]
        for p in tiny_model.parameters():
            p.add_(0.05)  # the policy moves on; the reference must not
    try:
        a = offloaded.logprobs(b, 1.0, 4)
        torch.testing.assert_close(a, in_memory.logprobs(b, 1.0, 4))
        torch.testing.assert_close(a, before, atol=2e-5, rtol=1e-5)
        assert all(p.numel() == 0 for p in offloaded.model.parameters())
        # a second pass reads the file again and agrees
        offloaded_again = offloaded.logprobs(b, 1.0, 4)
        torch.testing.assert_close(offloaded_again, a)
    finally:
        with torch.no_grad():
            for p, s in zip(tiny_model.parameters(), saved, strict=True):
                p.copy_(s)
