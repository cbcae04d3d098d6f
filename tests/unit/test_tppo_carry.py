"""T-PPO's carried partial responses (``anypo.rollout.TPPOCarry``) on a tiny deterministic set-up.

A scripted engine on the character tokenizer (``tests/unit/scripted_engine.py``) answers prompt ``q``
with a fixed full response ``FULL[q]``: given prompt + prefix it continues with the rest of that
response, at most ``sampling.max_new_tokens`` characters, flagged truncated when more was left. Every
expected value below is read off these strings by hand (one token per character).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from scripted_engine import char_generation, exact_reward, group_rollout, prompt_texts, rows_text

from anypo.engines.base import SamplingConfig
from anypo.rollout import Request, TPPOCarry, TPPOCarryConfig
from anypo.tasks.base import Example

FULL = {"q0": "ab", "q1": "012345", "q2": "ABCDEFGHIJKLMN", "q3": "xyz"}
EX = [Example(q, FULL[q]) for q in ("q0", "q1", "q2", "q3")]  # the answer is the whole full response
W = 4  # the window: sampling.max_new_tokens


class WindowEngine:
    """Continues ``FULL[q]`` after the given prefix, up to the call's max_new_tokens; records
    (prompt texts, n, max_new_tokens, seed) per call."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n, sampling, seed=None):
        texts = prompt_texts(prompts)
        self.calls.append((texts, n, sampling.max_new_tokens, seed))
        outs, cut = [], []
        for t in texts:
            q, prefix = t[2:].split("\nA:", 1)
            rest = FULL[q][len(prefix) :]
            for _ in range(n):
                outs.append(rest[: sampling.max_new_tokens])
                cut.append(len(rest) > sampling.max_new_tokens)
        return dataclasses.replace(char_generation(outs, n), truncated=torch.tensor(cut))


def make_part(cfg: TPPOCarryConfig | None = None, G: int = 2) -> tuple[TPPOCarry, WindowEngine]:
    engine = WindowEngine()
    groups = group_rollout(engine, EX, exact_reward, G, SamplingConfig(max_new_tokens=W))
    return TPPOCarry(cfg or TPPOCarryConfig(), groups), engine


def test_carry_across_two_steps():
    """Step 1, requests (q1, 2) and (q0, 2), nothing carried: q1's rows get "0123" (6 characters left,
    window 4: cut, unfinished) and q0's "ab" (finished, reward 1). The state then holds q1's two
    partial responses "0123", carried once.

    Step 2, requests (q2, 2) and (q3, 2): 4 slots, 2 carried rows take the last 2, i.e. all of group 1,
    so q3 gets no sample (unused prompt) and q2 two fresh ones ("ABCD", cut: unfinished). The carried
    rows continue from prompt "U:q1\\nA:0123": "45" ends the response, so the row holds "012345" with
    the 4 prefix tokens masked (mask 0 0 0 0 1 1, old log-probs 0 there and -0.5 on "45"), reward 1
    for the whole response, unfinished False: they leave the carry. The state then holds q2's "ABCD"
    twice. Group ids stay one per request (offset 10)."""
    part, engine = make_part()
    b1 = part.collect([Request(1, 2), Request(0, 2)], seed=3, step=1)
    assert rows_text(b1) == ["0123", "0123", "ab", "ab"]
    assert b1.extras["unfinished"] == [True, True, False, False]
    assert b1.extras["carried_steps"] == [0, 0, 0, 0] and b1.extras["rollin_tokens"] == [0, 0, 0, 0]
    assert b1.rewards.tolist() == [0.0, 0.0, 1.0, 1.0]
    tok = [ord(c) for c in "0123"]
    assert part.state_dict() == {"carry": [{"index": 1, "tokens": tok, "carried": 1}] * 2}
    m1 = part.pop_metrics()
    assert m1["rollout/carry_in"] == 0 and m1["rollout/carry_out"] == 2 and m1["rollout/carry_out_length_mean"] == 4
    assert m1["rollout/carry_final"] == 2 and m1["rollout/carry_final_reward_mean"] == 1.0
    assert "rollout/carry_in_length_mean" not in m1

    engine.calls.clear()
    b2 = part.collect([Request(2, 2), Request(3, 2)], seed=5, step=2, group_offset=10)
    assert b2.group_ids.tolist() == [10, 10, 11, 11]
    assert b2.extras["prompt_index"] == [2, 2, 1, 1]
    assert b2.response_ids[2, :6].tolist() == [ord(c) for c in "012345"]
    assert b2.response_mask[2, :6].tolist() == [0, 0, 0, 0, 1, 1] and b2.response_mask[2, 6:].sum() == 0
    assert b2.old_logprobs[3, :6].tolist() == [0.0, 0.0, 0.0, 0.0, -0.5, -0.5]
    assert rows_text(b2) == ["ABCD", "ABCD", "45", "45"]  # the masked tokens only
    assert b2.extras["unfinished"] == [True, True, False, False]
    assert b2.extras["carried_steps"] == [0, 0, 1, 1] and b2.extras["rollin_tokens"] == [0, 0, 4, 4]
    assert b2.rewards.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert b2.extras["max_tokens"] == [W * 4] * 4  # the total limit, window * (max_carries + 1)
    seen = [t for texts, *_ in engine.calls for t in texts]
    assert "U:q1\nA:0123" in seen and not any(t.startswith("U:q3") for t in seen)
    assert part.state_dict() == {"carry": [{"index": 2, "tokens": [ord(c) for c in "ABCD"], "carried": 1}] * 2}
    m2 = part.pop_metrics()
    assert m2["rollout/carry_in"] == 2 and m2["rollout/carry_in_length_mean"] == 4
    assert m2["rollout/carry_fresh"] == 2 and m2["rollout/carry_unused_prompts"] == 1
    assert m2["rollout/carry_out"] == 2 and m2["rollout/carry_final"] == 2


def test_egae_sees_the_carried_batch():
    """EGAE on step 1's batch with zero values and no whitening: the unfinished rows ("0123") get no
    reward and bootstrap from V = 0, so every advantage is 0; a finished "ab" row (R = 1, gamma 1,
    lambda 0.95) gets A = [0.95, 1]. In step 2 the carried rows' advantages sit on "45" only:
    A = [0.95, 1] at columns 4, 5 and 0 on the masked prefix."""
    from anypo.advantages.egae import EGAEAdvantage, egae

    part, _ = make_part()
    cfg = EGAEAdvantage(lam_actor=0.95, whiten=False)
    b1 = part.collect([Request(1, 2), Request(0, 2)], seed=3, step=1)
    b1.values = torch.zeros(b1.response_mask.shape)
    A = egae(b1, cfg)
    assert torch.allclose(A[:2], torch.zeros(2, 4)) and torch.allclose(A[2, :2], torch.tensor([0.95, 1.0]))
    assert b1.part_metrics["egae_unfinished_frac"] == 0.5
    b2 = part.collect([Request(2, 2), Request(3, 2)], seed=5, step=2)
    b2.values = torch.zeros(b2.response_mask.shape)
    A2 = egae(b2, cfg)
    assert torch.allclose(A2[2, :6], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.95, 1.0]))


def test_cap_and_total_length_end_a_response():
    """q2 has 14 characters. ``max_carries=1``: step 1 "ABCD" (carried), step 2 "EFGH" cut again after
    one carry: final (truncated, unfinished False), counted dropped at the cap.

    ``max_total_tokens=6``: step 1 "ABCD" (carried), step 2 the continuation may add only 6 - 4 = 2
    tokens (its own engine call at max_new_tokens 2, the fresh q0 row at 4): "EF", length 6 = the
    limit: final, counted at the length limit. The rows stay in request order (fresh q0 of group 0,
    then the carried row in the last slot)."""
    part, _ = make_part(TPPOCarryConfig(max_carries=1), G=1)
    part.collect([Request(2, 1)], seed=1, step=1)
    b = part.collect([Request(0, 1)], seed=2, step=2)
    assert rows_text(b) == ["EFGH"] and b.extras["unfinished"] == [False] and bool(b.truncated[0])
    assert part.carry == [] and part.pop_metrics()["rollout/carry_dropped_at_cap"] == 1

    part, engine = make_part(TPPOCarryConfig(max_total_tokens=6), G=1)
    part.collect([Request(2, 1)], seed=1, step=1)
    engine.calls.clear()
    b = part.collect([Request(0, 1), Request(3, 1)], seed=2, step=2)
    assert sorted(c[2] for c in engine.calls) == [2, 4]
    assert b.extras["prompt_index"] == [0, 2] and rows_text(b) == ["ab", "EF"]
    assert b.response_mask[1, :6].tolist() == [0, 0, 0, 0, 1, 1]
    assert b.extras["unfinished"] == [False, False] and part.carry == []
    m = part.pop_metrics()
    assert m["rollout/carry_length_limit"] == 1 and m["rollout/carry_unused_prompts"] == 1


def test_state_survives_a_checkpoint(tmp_path):
    """The carry state written by ``anypo.checkpoint.save`` and read back by ``load`` gives a fresh part
    the same next step as the part that never stopped: same rows, masks, flags and next state."""
    from anypo import checkpoint

    part, _ = make_part()
    part.collect([Request(1, 2), Request(2, 2)], seed=3, step=1)
    checkpoint.save(tmp_path, 1, {}, {"rollout": part.state_dict()})
    _, state = checkpoint.load(checkpoint.latest(tmp_path))
    restored, _ = make_part()
    restored.load_state_dict(state["rollout"])
    assert restored.state_dict() == part.state_dict() and len(part.carry) == 4
    assert json.loads(json.dumps(part.state_dict())) == part.state_dict()  # plain JSON-able data
    reqs = [Request(0, 2), Request(3, 2)]
    a, b = part.collect(reqs, seed=9, step=2), restored.collect(reqs, seed=9, step=2)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    assert a.extras["unfinished"] == b.extras["unfinished"] and part.state_dict() == restored.state_dict()


def test_bad_settings():
    with pytest.raises(ValueError, match="max_carries"):
        TPPOCarryConfig(max_carries=-1)
    with pytest.raises(ValueError, match="max_total_tokens"):
        TPPOCarryConfig(max_total_tokens=-2)
    with pytest.raises(ValueError, match="max_total_tokens .* below the window"):
        make_part(TPPOCarryConfig(max_total_tokens=3))


def test_preset_and_config_check():
    """The tppo preset carries by default (carry=False: plain rollouts); the config check refuses the carry
    with a group-relative advantage (GRPO) and accepts the preset."""
    from anypo.advantages import GRPOAdvantage
    from anypo.algorithms import PRESETS
    from anypo.config import TrainConfig
    from anypo.validate import train_config_problems

    algo = PRESETS["tppo"].build(max_carries=2, max_total_tokens=64)
    assert algo.rollout == TPPOCarryConfig(max_carries=2, max_total_tokens=64)
    assert PRESETS["tppo"].build(carry=False).rollout is None
    problems = train_config_problems(TrainConfig(algo=dataclasses.replace(algo, advantage=GRPOAdvantage())))
    assert any("several prompts in one group" in p for p in problems)
    assert not any("several prompts" in p for p in train_config_problems(TrainConfig(algo=algo)))
