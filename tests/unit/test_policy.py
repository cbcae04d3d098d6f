"""The trainer's forward pass: response log-probs, trimmed length-bucketed micro-batches."""

import pytest
import torch

from anypo.policy import batched_logprobs, micro_batches, response_logprobs
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
    assert total == pytest.approx(float(full.detach()), rel=1e-5, abs=1e-7)
    for a, c in zip(g_full, [p.grad for p in params], strict=True):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-4)
    tiny_model.zero_grad()


def test_shared_prompt_pass_equals_separate_passes(tiny_model, tokenizer):
    """Rows of one group share one prompt forward pass (KV cache indexed out to the rows). With the
    same rows given distinct group ids every row runs its own prompt: log-probs, entropy and the
    gradient of a loss on every parameter must agree (the prompt's gradient is the sum over rows)."""
    shared = _batch(tokenizer)
    separate = _batch(tokenizer)
    separate.group_ids = torch.arange(separate.num_seqs)  # no two rows share a prompt pass
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    results = []
    for b in (shared, separate):
        tiny_model.zero_grad()
        out = response_logprobs(tiny_model, b, temperature=0.8, entropy=True, share_prompt=True)
        weights = torch.linspace(-1, 1, b.response_mask.numel()).view_as(b.mask)
        ((out.logprobs * weights).sum() + 0.1 * out.entropy.sum()).backward()
        results.append((out.logprobs.detach(), out.entropy.detach(), [p.grad.clone() for p in params]))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    torch.testing.assert_close(lp_a, lp_b, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent_a, ent_b, atol=2e-5, rtol=1e-5)
    for a, c in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    tiny_model.zero_grad()


def test_micro_batches_keep_groups_together(tokenizer):
    b = _batch(tokenizer)  # 3 groups of 2 rows
    for _, mb in micro_batches(b, 2):
        assert mb.group_ids.unique().numel() == 1
