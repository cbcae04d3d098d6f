"""Shared by the rollout-part unit tests: a character tokenizer (one token per character), a scripted
engine on it, and the group generator built around them, so the exact prompts an engine saw and the
exact tokens of every row can be read back (``rows_text``)."""

from __future__ import annotations

import torch

from anypo.engines.base import Generation, SamplingConfig
from anypo.rollout import GroupRollout
from anypo.types import RewardResult, RolloutBatch


class CharTokenizer:
    """Token id = the character's code point; pad 0; chat template ``"U:" + last message + "\\nA:"``."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids if int(i) != 0)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "U:" + messages[-1]["content"] + "\nA:"


def prompt_texts(prompts: list[list[int]]) -> list[str]:
    """The prompts' token ids read back as text."""
    return ["".join(map(chr, p)) for p in prompts]


def char_generation(outs: list[str], n: int) -> Generation:
    """The ``Generation`` of replies ``outs`` (``n`` per prompt, prompt by prompt), one token per
    character, each with log-prob -0.5, none truncated."""
    T = max(len(o) for o in outs)
    ids = torch.zeros(len(outs), T, dtype=torch.long)
    mask = torch.zeros(len(outs), T, dtype=torch.long)
    for r, o in enumerate(outs):
        ids[r, : len(o)] = torch.tensor([ord(c) for c in o])
        mask[r, : len(o)] = 1
    return Generation(
        prompt_index=torch.arange(len(outs) // n).repeat_interleave(n),
        response_ids=ids,
        response_mask=mask,
        logprobs=-0.5 * mask.float(),
        truncated=torch.zeros(len(outs), dtype=torch.bool),
    )


class ScriptEngine:
    """``reply(prompt_text, k) -> str``: the k-th sample (0-based, per prompt) of a call; each
    character's log-prob is -0.5. Records every call as (prompt texts, n, seed)."""

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def generate(self, prompts, n, sampling, seed=None):
        texts = prompt_texts(prompts)
        self.calls.append((texts, n, seed))
        return char_generation([self.reply(t, k) for t in texts for k in range(n)], n)


def exact_reward(sample) -> RewardResult:
    """1 when the stripped completion is the reference answer, else 0 (component ``correct``)."""
    ok = float(sample.completion.strip() == sample.answer)
    return RewardResult(score=ok, components={"correct": ok})


def group_rollout(engine, examples, reward, G: int, sampling: SamplingConfig | None = None) -> GroupRollout:
    """The group generator over ``examples``' chat-templated prompts on :class:`CharTokenizer`, with
    ``engine``, ``reward`` (its correctness component ``correct``), ``G`` samples per prompt and at
    most 16 new tokens per sample (``sampling``: ``SamplingConfig(max_new_tokens=16)``)."""
    tok = CharTokenizer()
    prompt_ids = [tok(tok.apply_chat_template([{"content": e.prompt}]))["input_ids"] for e in examples]
    return GroupRollout(
        engine,
        tok,
        prompt_ids,
        lambda i, text, n, t: examples[i].to_sample(text, n, 16, t),
        reward,
        sampling or SamplingConfig(max_new_tokens=16),
        G,
        "correct",
        examples=examples,
    )


def rows_text(batch: RolloutBatch, field: str = "response") -> list[str]:
    """Every row's response (or, ``field="prompt"``, prompt) tokens read back as text, padding dropped."""
    ids, mask = (
        (batch.response_ids, batch.response_mask) if field == "response" else (batch.prompt_ids, batch.prompt_mask)
    )
    return ["".join(chr(int(t)) for t in ids[r][mask[r].bool()]) for r in range(batch.num_seqs)]
