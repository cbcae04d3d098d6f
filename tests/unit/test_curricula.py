"""Data selection, curricula and guidance: per-prompt statistics, prime-rl's difficulty pools, MMR1's
VAS, the group generator's requests (sizes, prompt inserts, roll-in prefixes), Scaf-GRPO's hints and
GHPO's partial solutions. Expected values are derived by hand in each docstring, or by numpy.

The rollout tests run a scripted engine on a character tokenizer (one token per character), so the
exact prompts the engine saw and the exact tokens of every row can be read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scripted_engine import ScriptEngine, group_rollout, rows_text

from anypo.ops import group_stats
from anypo.rollout import GHPOConfig, Request, ScafConfig
from anypo.rollout.guidance import GHPOHints, ScafHints, all_wrong_groups, ladder_levels, solution_prefix
from anypo.samplers import CurriculumConfig, CurriculumSampler, PromptStats, VASConfig, VASSampler
from anypo.samplers.curricula import difficulty_pools, distinct_n, pool_counts, vps_weights
from anypo.tasks.base import Example
from anypo.types import RewardResult, RolloutBatch


# ---- scripted engine on a character tokenizer (tests/unit/scripted_engine.py) ----
def last_line_reward(sample):  # correct iff the reference answer is the reply's last line; format: it is a number
    last = sample.completion.strip().splitlines()[-1] if sample.completion.strip() else ""
    ok = float(last == sample.answer)
    return RewardResult(score=ok, components={"correct": ok, "format": float(last.isdigit())})


def make_groups(reply, examples, G=4):
    engine = ScriptEngine(reply)
    return group_rollout(engine, examples, last_line_reward, G), engine


# ---- per-prompt statistics ----
def test_prompt_stats_by_hand():
    """Prompt 3: draw 1 at step 1 passes 1 of 2 (p = 0.5; EMA starts at 0.5), draw 2 at step 2
    passes 2 of 2 (p = 1; EMA = 0.5 * 0.5 + 0.5 * 1 = 0.75). A guided row (correct) is left out.
    Totals: 3 of 4 seen, mean pass 0.75; history [0.5, 1.0]; prompt 0 never seen (NaN)."""
    s = PromptStats(5, ema_rate=0.5, window=2)

    def batch(correct, guided):
        n = len(correct)
        return RolloutBatch(
            torch.ones(n, 2),
            torch.zeros(n, dtype=torch.long),
            torch.tensor(correct, dtype=torch.float32),
            extras={"prompt_index": [3] * n, "correct": correct, "guided": guided},
        )

    assert s.update(batch([1.0, 0.0, 1.0], [False, False, True]), step=1) == {3: 0.5}
    s.update(batch([1.0, 1.0], [False, False]), step=2)
    assert s.seen[3] == 4 and s.passed[3] == 3 and s.ema[3] == pytest.approx(0.75)
    assert s.history[3] == [0.5, 1.0] and s.last_step[3] == 2 and s.last[3] == 1.0
    assert s.mean_pass()[3] == pytest.approx(0.75) and np.isnan(s.mean_pass()[0])
    r = PromptStats(5, ema_rate=0.5, window=2)
    r.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert r.ema[3] == s.ema[3] and np.isnan(r.ema[0]) and r.history == s.history
    with pytest.raises(ValueError, match="ema_rate"):
        PromptStats(3, ema_rate=0.0)


# ---- prime-rl difficulty pools ----
def test_difficulty_pools_and_counts_by_hand():
    """Borders 0.8 / 0.2: pass rates [nan, 0.9, 0.8, 0.5, 0.2, 0.0] -> normal, easy, easy, normal,
    hard, hard. B = 10 with fractions 0.1 / 0.1: 1 easy, 1 hard, 8 normal; with only 3 normal prompts
    the normal deficit 5 goes to easy (pool of 4: 3 more) then hard (2 more)."""
    pools = difficulty_pools(np.array([np.nan, 0.9, 0.8, 0.5, 0.2, 0.0]), 0.8, 0.2)
    assert pools.tolist() == [0, 1, 1, 0, 2, 2]
    assert pool_counts(10, 0.1, 0.1, (20, 5, 5)) == [8, 1, 1]
    assert pool_counts(10, 0.1, 0.1, (3, 4, 10)) == [3, 4, 3]
    assert pool_counts(4, 0.1, 0.1, (20, 5, 5)) == [4, 0, 0]  # floor(0.4) = 0
    with pytest.raises(ValueError, match="hard_border"):
        CurriculumConfig(easy_border=0.2, hard_border=0.5)


def test_curriculum_sampler_draws_from_pools_and_resumes():
    """20 prompts; prompts 0-4 observed all right (easy), 5-9 all wrong (hard), the others unseen
    (normal). A batch of 10 then holds exactly 1 easy, 1 hard and 8 normal prompts, distinct; a
    sampler restored from the JSON state draws the same next batches."""
    s = CurriculumSampler(CurriculumConfig(), 20, 10, seed=3)
    s.next_prompts(1)
    idx = list(range(10))
    correct = [1.0] * 5 * 2 + [0.0] * 5 * 2
    s.observe(
        RolloutBatch(
            torch.ones(20, 2),
            torch.arange(10).repeat_interleave(2),
            torch.tensor(correct),
            extras={"prompt_index": [i for i in idx for _ in range(2)], "correct": correct},
        )
    )
    state = json.loads(json.dumps(s.state_dict()))
    drawn = s.next_prompts(2)
    assert len(set(drawn)) == 10
    assert sum(i < 5 for i in drawn) == 1 and sum(5 <= i < 10 for i in drawn) == 1
    assert s.pop_metrics()["pool_easy_frac"] == 0.25
    r = CurriculumSampler(CurriculumConfig(), 20, 10, seed=0)
    r.load_state_dict(state)
    assert r.next_prompts(2) == drawn


# ---- MMR1 VAS ----
def test_vps_weights_match_the_spec_example():
    """Spec section 7: P = [0, 2, 4, 7, 8] / 8, TDS = [0.1, 0.4, 0.3, 0.2, 0.05], alpha 0.8, beta 0.2:
    OVS = [0, 0.1875, 0.25, 0.109375, 0], VPS = [0.02, 0.23, 0.26, 0.1275, 0.01], min-max weights
    [0.04, 0.88, 1.0, 0.47, 0.0] (numpy, 1e-8 in the denominator)."""
    w = vps_weights(np.array([0, 2, 4, 7, 8]) / 8, np.array([0.10, 0.40, 0.30, 0.20, 0.05]), 0.8, 0.2)
    np.testing.assert_allclose(w, [0.04, 0.88, 1.0, 0.47, 0.0], atol=1e-6)
    np.testing.assert_allclose(w / w.sum(), [0.016736, 0.368201, 0.41841, 0.196653, 0.0], atol=1e-6)


def test_distinct_n_by_hand():
    """[1,2,3,4] and [1,2,3,9]: 3-grams (1,2,3), (2,3,4), (1,2,3), (2,3,9): 3 distinct of 4 = 0.75;
    sequences shorter than 3 have no 3-gram (0)."""
    assert distinct_n([[1, 2, 3, 4], [1, 2, 3, 9]], 3) == 0.75
    assert distinct_n([[1, 2]], 3) == 0.0


def test_vas_rescoring_weights_and_mixed_batches():
    """5 prompts re-scored with 2 samples each: prompt 1 passes 1 of 2 (OVS 0.25), the others 0 or 2
    of 2 (OVS 0); every response is [7, 7] (no 3-gram: TDS 0). Weights: 1 for prompt 1, 0 elsewhere.
    With B = 4 and lambda = 0.5 the first two prompts of every batch are prompt 1; the other two come
    from the cycled permutation. Re-scoring is due at the first call and again 4 steps later."""
    s = VASSampler(VASConfig(rescore_samples=2), 5, 4, seed=0)
    idx, n = s.rescore_prompts(1)
    assert idx == [0, 1, 2, 3, 4] and n == 2 and s.rescore_prompts(2) == ([], 0)
    correct = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    s.rescore(
        RolloutBatch(
            torch.ones(10, 2),
            torch.arange(5).repeat_interleave(2),
            torch.tensor(correct),
            response_ids=torch.full((10, 2), 7),
            extras={"prompt_index": [i for i in idx for _ in range(2)], "correct": correct},
        )
    )
    np.testing.assert_allclose(s.weights, [0, 1, 0, 0, 0], atol=1e-7)
    state = json.loads(json.dumps(s.state_dict()))
    batches = [s.next_prompts(t) for t in (1, 2, 3)]
    assert all(b[:2] == [1, 1] for b in batches)
    uniform = [i for b in batches for i in b[2:]]
    assert sorted(uniform[:5]) == [0, 1, 2, 3, 4]  # one pass of the permutation
    assert s.rescore_prompts(5)[0] == [0, 1, 2, 3, 4]
    r = VASSampler(VASConfig(rescore_samples=2), 5, 4, seed=0)
    r.load_state_dict(state)
    assert [r.next_prompts(t) for t in (1, 2, 3)] == batches


# ---- the group generator: sizes, inserts, roll-ins ----
EX = [Example("q0", "7", solution="Let x=3. Then 2x+1=7, so the answer is 7.", hints=("h1", "h2")), Example("q1", "5")]


def test_requests_sizes_inserts_and_rollin_prefix():
    """Request (0, n=3, insert "HINT") and (1, n=1, prefix "ab"): one engine call per size (n=1 with
    the base seed 10, n=3 with 10 + 7919); group ids [5, 5, 5, 6] at offset 5; prompt 0's user message
    is "q0\\n\\nHINT"; row 3's response is "ab" + the reply with the prefix masked (mask 0 0 1 1 ..)
    and its old log-probs 0 there; the reward sees "ab" + reply; only the generated characters count."""
    groups, engine = make_groups(lambda text, k: f"r{k}", EX)
    b = groups.collect(
        [Request(0, 3, insert="HINT"), Request(1, 1, prefix=groups.encode("ab"))], seed=10, group_offset=5
    )
    assert [(n, seed) for _, n, seed in engine.calls] == [(1, 10), (3, 10 + 7919)]
    assert engine.calls[0][0] == ["U:q1\nA:ab"] and engine.calls[1][0] == ["U:q0\n\nHINT\nA:"]
    assert b.group_ids.tolist() == [5, 5, 5, 6]
    assert rows_text(b, "prompt") == ["U:q0\n\nHINT\nA:"] * 3 + ["U:q1\nA:"]
    assert b.response_mask[3].tolist()[:4] == [0, 0, 1, 1] and b.old_logprobs[3, :2].tolist() == [0.0, 0.0]
    assert b.extras["text"] == ["r0", "r1", "r2", "abr0"]
    assert b.extras["guided"] == [True, True, True, True] and b.extras["rollin_tokens"] == [0, 0, 0, 2]
    assert groups.generated_tokens == 3 * 2 + 2


def test_plain_indices_are_groups_of_G():
    groups, engine = make_groups(lambda text, k: "7" if k == 0 else "x", EX, G=4)
    b = groups.collect([0, 1], seed=3)
    assert len(engine.calls) == 1 and engine.calls[0][1:] == (4, 3)
    assert b.group_ids.tolist() == [0] * 4 + [1] * 4 and b.extras["guided"] == [False] * 8
    assert b.rewards.tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


# ---- Scaf-GRPO ----
def test_scaf_rescue_replaces_first_row_with_lowest_correct_level():
    """Spec section 10: group of 8 all wrong at step 60 (> warm-up 50); hinted levels 1..8 answer
    [0,0,0,0,1,1,0,1], so level 5 wins and replaces row 0 (prompt included). Rewards become
    [1,0,0,0,0,0,0,0] and GRPO's advantage (unbiased std, eps 1e-6) is 2.474867 for it and -0.353552
    for the others (numpy below)."""
    ladder = tuple(f"H{k}" for k in range(1, 9))
    ex = [Example("q", "7", hints=ladder)]
    wins = {"H5", "H6", "H8"}

    def reply(text, k):
        return "7" if any(f"Hint: {h}\n" in text for h in wins) else "0"

    groups, engine = make_groups(reply, ex, G=8)
    part = ScafHints(ScafConfig(warmup_steps=50), groups)
    assert part.collect([Request(0, 8)], seed=0, step=50).rewards.sum() == 0  # warm-up: no hints
    b = part.collect([Request(0, 8)], seed=0, step=60)
    assert b.rewards.tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert rows_text(b, "prompt")[0] == "U:q\n\nHint: H5\nA:" and rows_text(b, "prompt")[1] == "U:q\nA:"
    assert b.extras["guided"] == [True] + [False] * 7
    r = np.array([1, 0, 0, 0, 0, 0, 0, 0.0])
    expected = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
    mean, std, _ = group_stats(b.rewards.double(), b.group_ids)
    np.testing.assert_allclose(((b.rewards.double() - mean) / (std + 1e-6)).numpy(), expected, atol=1e-6)
    assert expected[0] == pytest.approx(2.474867, abs=1e-6)
    m = part.pop_metrics()
    assert m["rollout/scaf_rescued_groups"] == 1 and m["rollout/scaf_level_mean"] == 5


def test_scaf_leaves_group_when_no_hint_works_and_thins_long_ladders():
    """No hinted sample right: the group is unchanged. A ladder of 20 rungs thinned to 8 keeps rungs
    round(k 19 / 7) = 0, 3, 5, 8, 11, 14, 16, 19."""
    groups, _ = make_groups(lambda text, k: "0", [Example("q", "7", hints=("a", "b"))], G=4)
    b = ScafHints(ScafConfig(warmup_steps=0), groups).collect([Request(0, 4)], seed=0, step=1)
    assert b.rewards.tolist() == [0, 0, 0, 0] and not any(b.extras["guided"])
    assert ladder_levels(20, 8) == [0, 3, 5, 8, 11, 14, 16, 19] and ladder_levels(3, 8) == [0, 1, 2]


# ---- GHPO ----
def test_solution_prefix_matches_the_spec_example():
    """Spec section 11: the 41-character solution cut at round(41 w): 10, 20 (20.5 rounds to even),
    31 characters."""
    sol = "Let x=3. Then 2x+1=7, so the answer is 7."
    assert [solution_prefix(sol, w) for w in (0.25, 0.5, 0.75)] == [
        "Let x=3. T",
        "Let x=3. Then 2x+1=7",
        "Let x=3. Then 2x+1=7, so the an",
    ]


def test_ghpo_cascade_keeps_the_stage_that_solved_the_group():
    """Group 0 (with a solution) all wrong -> 25% stage still all wrong -> 50% stage: sample 0 right
    ([1,0,0,0]); the 75% stage does not run for it. Group 1 (solved without help) is untouched. The
    group trains with the 50% prompt; three engine calls in all."""

    def reply(text, k):
        if text.startswith("U:q1"):
            return "5" if k == 0 else "x"
        return "7" if "2x+1=7\n" in text and k == 0 else "0"

    groups, engine = make_groups(reply, EX, G=4)
    part = GHPOHints(GHPOConfig(), groups)
    b = part.collect([Request(0, 4), Request(1, 4)], seed=0, step=1)
    assert len(engine.calls) == 3
    assert b.rewards.tolist() == [1, 0, 0, 0, 1, 0, 0, 0] and b.group_ids.tolist() == [0] * 4 + [1] * 4
    prompts = rows_text(b, "prompt")
    assert prompts[0].endswith("problem:\nLet x=3. Then 2x+1=7\nA:") and prompts[4] == "U:q1\nA:"
    assert all_wrong_groups(b) == []
    m = part.pop_metrics()
    assert m["rollout/ghpo_regenerated_groups"] == 2 and m["rollout/ghpo_unsolved_groups"] == 0


# ---- GDRO ----
def test_sqrt_allocation_matches_the_spec_example():
    """Spec section 8 (derived): p = [0.9, 0.5, 0.1], sigma = sqrt(p (1 - p)) = [0.3, 0.5, 0.3], mean
    budget 8 for 3 prompts (24): continuous n = 24 sigma / 1.1 = [6.5455, 10.9091, 6.5455]; floors
    [6, 10, 6], the 2 left go to the largest remainders (0.909, then 0.545 of the first): [7, 11, 6].
    Bounds bind: sigma [0.05, 0.5, 0.5, 0.05], 32 in [2, 16]: [1.45, 14.5, 14.5, 1.45] -> the small
    ones clip to 2 and the other two share 28."""
    from anypo.samplers.gdro import sqrt_allocation

    p = np.array([0.9, 0.5, 0.1])
    sigma = np.sqrt(p * (1 - p))
    np.testing.assert_allclose(24 * sigma / sigma.sum(), [6.5455, 10.9091, 6.5455], atol=1e-4)
    assert sqrt_allocation(sigma, 24, 2, 16) == [7, 11, 6]
    assert sqrt_allocation(np.array([0.05, 0.5, 0.5, 0.05]), 32, 2, 16) == [2, 14, 14, 2]
    assert sqrt_allocation(np.array([0.2, 0.2]), 8, 2, 16) == [4, 4]


def test_assign_bins_with_hysteresis():
    """Edges (0.25, 0.5, 0.75), margin 0.05: 0.52 from bin 1 stays (within 0.5 + 0.05); 0.56 moves to
    bin 2; 0.1 from bin 3 moves to 0; a new prompt (-1) takes its raw bin."""
    from anypo.samplers.gdro import assign_bins

    out = assign_bins(np.array([0.52, 0.56, 0.1, 0.8]), np.array([1, 1, 3, -1]), (0.25, 0.5, 0.75), 0.05)
    assert out.tolist() == [1, 2, 0, 3]


def test_gdro_weights_move_to_the_failing_bin_and_sizes_follow_variance():
    """Two prompts in bin 2 (prior 0.5): prompt 0 all right, prompt 1 all wrong, observed at one draw.
    pass@k windows: [1] and [0] -> estimates 1.0 (bin 3) and 0.0 (bin 0). Bin 2's error this draw is
    1 - mean(1, 0) = 0.5; its EMA 0.1 * 0.5 = 0.05, bias-corrected / (1 - 0.9) = 0.5, so log w_2 grows
    by eta 0.5 = 0.25 relative to the others (then shifted so the max is 0). Its pass EMA stays 0.5.
    q mixes softmax(log w) over the non-empty bins (0, 2, 3) with 10% uniform over those three."""
    from anypo.samplers import GDROConfig, GDROSampler

    s = GDROSampler(GDROConfig(), 4, 2, seed=0)
    assert s.bins.tolist() == [2, 2, 2, 2]
    correct = [1.0, 1.0, 0.0, 0.0]
    s.observe(
        RolloutBatch(
            torch.ones(4, 2),
            torch.tensor([0, 0, 1, 1]),
            torch.tensor(correct),
            extras={"prompt_index": [0, 0, 1, 1], "correct": correct},
        )
    )
    assert s.bins.tolist() == [3, 0, 2, 2]
    np.testing.assert_allclose(s.log_w, [-0.25, -0.25, 0.0, -0.25])
    q = s.bin_distribution()  # bin 1 is empty: q over bins 0, 2, 3 only
    w = np.exp([-0.25, 0.0, -0.25])
    np.testing.assert_allclose(q[[0, 2, 3]], 0.9 * w / w.sum() + 0.1 / 3)
    assert q[1] == 0.0
    # group sizes at G = 4: sigma = sqrt(p(1-p)) of the bins' pass EMAs (all 0.5 here): equal -> 4 each
    assert s.group_sizes([0, 1], 4) == [4, 4]
    s.pass_ema[:] = [0.0, 0.5, 0.5, 0.99]  # bin 0 hopeless (sigma floor 0.05), bin 3 nearly solved
    assert sum(s.group_sizes([0, 1, 2], 4)) == 12
    state = json.loads(json.dumps(s.state_dict()))
    r = GDROSampler(GDROConfig(), 4, 2, seed=0)
    r.load_state_dict(state)
    assert r.next_prompts(1) == s.next_prompts(1) and r.bins.tolist() == s.bins.tolist()


# ---- XRPO allocation and seeding ----
def test_xrpo_priority_matches_the_spec_example():
    """rlvr-losses spec section 3: t_{0.975, 3} = 3.182446305284263, t_{0.975, 4} = 2.7764451051977987;
    rewards q1 [1,0,1,1], q2 [0,0,0,1]: s = 0.5, h(4) = 0.795612, h(5) = 0.620832, Delta = 0.17478,
    phi = 0.1 log(101) / 4 = 0.115378, Pi = 0.290158; q3 [1,1,1,1]: s = 0, Pi = phi."""
    from anypo.rollout.guidance import t_quantile, xrpo_priority

    assert t_quantile(0.975, 3) == pytest.approx(3.182446305284263, abs=1e-9)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764451051977987, abs=1e-9)
    assert xrpo_priority([1, 0, 1, 1], 100, 0.05, 0.1) == pytest.approx(0.290158, abs=1e-6)
    assert xrpo_priority([0, 0, 0, 1], 100, 0.05, 0.1) == pytest.approx(0.290158, abs=1e-6)
    assert xrpo_priority([1, 1, 1, 1], 100, 0.05, 0.1) == pytest.approx(0.1 * np.log(101) / 4, abs=1e-9)


def test_xrpo_allocation_and_seeding_scenario():
    """G = 4, base 2, two prompts: budget 8, base 4, 4 extra in 2 rounds of 2. Prompt 0 answers right on
    even samples ([1, 0]: s = 0.7071), prompt 1 never (s = 0: only phi = 0.1 log 2 / n, at most 0.035).
    Round 1: prompt 0's Delta at n = 2 is s (t_{.975,1} / sqrt 2 - t_{.975,2} / sqrt 3) = 4.60, at n = 3
    0.63: both extras go to it; its new samples are again [1, 0]. Round 2 at n = 4 and 5 (s = 0.577):
    0.20 and 0.11, still above 0.035: prompt 0 ends with 6 samples, prompt 1 with 2. Prompt 1 is all
    wrong and the corpus is empty at the first call: no seeding; prompt 0's right answer enters the
    corpus. At the second call prompt 1 is regenerated with it as a solved example and answers right."""
    from anypo.rollout import XRPOAllocation, XRPOAllocConfig

    def reply(text, k):
        if text.startswith("U:q1"):
            return "5" if "Solved examples:" in text else "x"
        return "7" if k % 2 == 0 else "0"

    groups, engine = make_groups(reply, EX, G=4)
    part = XRPOAllocation(XRPOAllocConfig(base_samples=2, rounds=2), groups)
    b = part.collect([Request(0, 4), Request(1, 4)], seed=0, step=1)
    assert b.group_ids.tolist() == [0] * 6 + [1] * 2
    assert b.rewards.tolist() == [1, 0, 1, 0, 1, 0, 0, 0]
    assert part.corpus == [(0, "7")] and part.pop_metrics()["rollout/xrpo_seeded_groups"] == 0
    b = part.collect([Request(0, 4), Request(1, 4)], seed=0, step=2)
    assert b.rewards[b.group_ids == 1].tolist() == [1, 1]
    assert rows_text(b, "prompt")[-1] == "U:q1\n\nSolved examples:\n\nQuestion: q0\n7\nA:"
    # engine calls: 3 at step 1 (base for both prompts, 2 rounds), 4 at step 2 (the same and the seeding)
    assert [n for _, n, _ in engine.calls] == [2] * 7 and len(engine.calls[-1][0]) == 1
    r = XRPOAllocation(XRPOAllocConfig(), groups)
    r.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert r.corpus == part.corpus


# ---- ARPO replay and task filter ----
def test_experience_replay_injects_a_stored_success():
    """Step 1: prompt 0 answers "7" (right) on sample 0 only: that success is stored. Step 2: every
    sample wrong, so the group's last sample becomes the stored "7" with the plain prompt: rewards
    [0, 0, 0, 1], the replayed row marked guided with old log-probs 0 (the loop recomputes them,
    needs_recomputed_old_logprobs). With max_tasks = 1, storing prompt 1 evicts prompt 0."""
    from anypo.rollout import ExperienceReplay, ExperienceReplayConfig

    state = {"solve": True}

    def reply(text, k):
        if text.startswith("U:q1"):
            return "5"
        return "7" if state["solve"] and k == 0 else "0"

    groups, _ = make_groups(reply, EX, G=4)
    part = ExperienceReplay(ExperienceReplayConfig(), groups)
    assert ExperienceReplayConfig().needs_recomputed_old_logprobs
    part.collect([Request(0, 4)], seed=0, step=1)
    assert list(part.buffer) == [0] and part.buffer[0]["text"] == "7"
    state["solve"] = False
    b = part.collect([Request(0, 4)], seed=1, step=2)
    assert b.rewards.tolist() == [0, 0, 0, 1] and b.extras["guided"] == [False, False, False, True]
    assert rows_text(b)[3] == "7" and rows_text(b, "prompt")[3] == "U:q0\nA:" and b.old_logprobs[3].abs().sum() == 0
    assert part.pop_metrics()["rollout/replay_injected"] == 1
    r = ExperienceReplay(ExperienceReplayConfig(max_tasks=1), groups)
    r.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert r.buffer == part.buffer
    r.collect([Request(1, 2)], seed=0, step=3)
    assert list(r.buffer) == [1]


def test_task_filter_keeps_prompts_the_baseline_sometimes_solves():
    """Baseline pass over 5 prompts, 4 samples each, pass rates [0, 0.5, 1, 0.25, 0]: kept [1, 3]
    (0 < p < 1); with keep_solved also 2. Draws then cycle over the kept prompts only; the filter
    runs once."""
    from anypo.samplers import TaskFilterConfig, TaskFilterSampler

    passes = [0, 2, 4, 1, 0]
    correct = [float(j < k) for k in passes for j in range(4)]
    batch = RolloutBatch(
        torch.ones(20, 2),
        torch.arange(5).repeat_interleave(4),
        torch.tensor(correct),
        extras={"prompt_index": [i for i in range(5) for _ in range(4)], "correct": correct},
    )
    s = TaskFilterSampler(TaskFilterConfig(rescore_samples=4, pool=0), 5, 2, seed=0)
    assert s.rescore_prompts(1) == ([0, 1, 2, 3, 4], 4)
    s.rescore(batch)
    assert s.kept == [1, 3] and s.rescore_prompts(2) == ([], 0)
    assert sorted(s.next_prompts(1)) == [1, 3] and sorted(s.next_prompts(2)) == [1, 3]
    t = TaskFilterSampler(TaskFilterConfig(rescore_samples=4, pool=0, keep_solved=True), 5, 2, seed=0)
    t.rescore(batch)
    assert t.kept == [1, 2, 3]
    r = TaskFilterSampler(TaskFilterConfig(rescore_samples=4, pool=0), 5, 2, seed=0)
    r.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert r.next_prompts(3) == s.next_prompts(3)


# ---- DeepVideo-R1 difficulty-aware augmentation ----
def test_difficulty_aug_reissues_all_equal_groups():
    """Spec (rlvr-losses section 6) decision rule: q1 [1,1,1,1] too easy -> harder, q2 [0,0,0,0] too
    hard -> guidance, q3 [1,0,0,1] kept. Here prompt 0 (always right) is regenerated with another
    training question as a distractor (examples 1 or 2, seeded), prompt 1 (always wrong, hints "h1",
    "h2") with "Hint: h1", prompt 2 (mixed) is untouched: 2 extra group generations."""
    from anypo.rollout import DifficultyAugConfig
    from anypo.rollout.guidance import DifficultyAug

    ex = [Example("q0", "7"), Example("q1", "5", hints=("h1", "h2")), Example("q2", "3")]

    def reply(text, k):
        if text.startswith("U:q0"):
            return "7"
        if text.startswith("U:q1"):
            return "5" if "Hint: h1" in text and k == 0 else "x"
        return "3" if k in (0, 3) else "x"

    groups, engine = make_groups(reply, ex, G=4)
    b = DifficultyAug(DifficultyAugConfig(), groups).collect([Request(0, 4), Request(1, 4), Request(2, 4)], 0, 1)
    prompts = rows_text(b, "prompt")
    assert prompts[0] in ("U:q0\n\nUnrelated note: q1\nA:", "U:q0\n\nUnrelated note: q2\nA:")
    assert prompts[4] == "U:q1\n\nHint: h1\nA:" and prompts[8] == "U:q2\nA:"
    assert b.rewards.tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1]
    assert len(engine.calls) == 2 and engine.calls[1][1] == 4


# ---- DR-PO dataset reset ----
def _spec_rollin(seed: int | list[int], beta: float, lens: list[int], seq_len: int = 12) -> list[int]:
    """The spec's (section 14) numpy reproduction of the code's RollinProcessor draws: roll-in length
    = the number of leading ones of each row."""
    rng = np.random.default_rng(seed)
    init = np.tile(rng.choice([True, False], size=(len(lens), 1), p=[beta, 1 - beta]), (1, seq_len))
    Lt = np.tril(np.ones((seq_len, seq_len)))
    m = np.stack([np.zeros(seq_len, bool) if L < 2 else rng.choice(Lt[: L - 1, :]).astype(bool) for L in lens])
    m[~init] = False
    return m.sum(1).tolist()


def test_rollin_lengths_follow_the_code_draws():
    """Seed 0, beta 1, reference lengths [5, 1, 6]: the spec's expected masks [[1,0,..],[0,..],[1,0,..]]
    (lengths 1, 0, 1); over 30 seeds and beta 1 / 0.5 the same lengths as the spec's reproduction;
    every length is in [1, L - 1] when reset, 0 for L < 2."""
    from anypo.rollout.reset import rollin_lengths

    assert rollin_lengths([5, 1, 6], 1.0, np.random.default_rng(0)) == [1, 0, 1]
    for seed in range(30):
        for beta in (1.0, 0.5):
            lens = [5, 1, 6, 9, 2]
            got = rollin_lengths(lens, beta, np.random.default_rng(seed))
            assert got == _spec_rollin(seed, beta, lens), (seed, beta)
            assert all(h == 0 or 1 <= h <= L - 1 for h, L in zip(got, lens, strict=True)) and got[1] == 0


def test_dataset_reset_forces_a_masked_prefix_of_the_solution():
    """Char tokenizer: the reference is EX[0].solution (41 characters). Every sample of prompt 0 starts
    with solution[:h] (h >= 1), masked, then the engine's continuation, masked 1; the engine saw prompt
    + prefix; prompt 1 (no solution) is generated from scratch. Group ids stay one per request, and
    ``trimmed()`` keeps every column up to the last generated token."""
    from anypo.rollout import DatasetReset, DatasetResetConfig

    groups, engine = make_groups(lambda text, k: "Z", EX, G=3)
    b = DatasetReset(DatasetResetConfig(), groups).collect(
        [Request(0, 3), Request(1, 2)], seed=4, step=1, group_offset=2
    )
    assert b.group_ids.tolist() == [2, 2, 2, 3, 3]
    sol = EX[0].solution
    for r in range(3):
        h = b.extras["rollin_tokens"][r]
        assert 1 <= h <= len(sol) - 1
        ids = b.response_ids[r]
        assert "".join(chr(int(t)) for t in ids[:h]) == sol[:h] and chr(int(ids[h])) == "Z"
        assert b.response_mask[r, :h].sum() == 0 and b.response_mask[r, h] == 1 and b.response_mask[r].sum() == 1
        assert engine.calls[0][0][r] == "U:q0\nA:" + sol[:h]
    assert b.extras["rollin_tokens"][3:] == [0, 0] and rows_text(b)[3:] == ["Z", "Z"]
    t = b.trimmed()
    last = max(b.extras["rollin_tokens"]) + 1
    assert t.response_ids.shape[1] == last and torch.equal(t.response_mask, b.response_mask[:, :last])


def test_dataset_reset_cap_bounds_the_rollin():
    """max_rollin_tokens=3 on the 41-character solution: the draw is the code's draw on a reference of
    4 tokens (the spec's reproduction above, on the part's stream seeded [seed, 59]), so every h is in
    {1, 2, 3} (uniform on min(L - 1, cap) values); over 40 samples all three values occur. A negative
    cap is refused."""
    from anypo.rollout import DatasetReset, DatasetResetConfig

    groups, _ = make_groups(lambda text, k: "Z", EX, G=40)
    b = DatasetReset(DatasetResetConfig(max_rollin_tokens=3), groups).collect([Request(0, 40)], seed=4, step=1)
    h = b.extras["rollin_tokens"]
    assert set(h) == {1, 2, 3}
    assert h == _spec_rollin([4, 59], 1.0, [4] * 40)
    with pytest.raises(ValueError, match="max_rollin_tokens"):
        DatasetResetConfig(max_rollin_tokens=-1)


# ---- iGRPO drafts and refinements ----
def test_draft_refine_conditions_on_the_best_draft():
    """Spec section 13: draft rewards [0, 1, 0, 1] -> the best is draft 1 (ties to the first maximum);
    the refinement prompt is q + draft 1; only the refinements are in the batch. A group of 8 splits
    into 4 drafts and 4 refinements (matched budget); a group of 3 into 1 draft and 2 refinements."""
    from anypo.rollout import DraftRefine, DraftRefineConfig
    from anypo.rollout.drafts import best_draft

    assert best_draft([0, 1, 0, 1]) == 1 and best_draft([0, 0]) == 0

    def reply(text, k):
        if "previous attempt" in text:
            return "7"
        return ["d0", "7", "d2", "7"][k]

    groups, engine = make_groups(reply, EX, G=8)
    part = DraftRefine(DraftRefineConfig(), groups)
    assert part.split(8) == (4, 4) and part.split(3) == (1, 2)
    b = part.collect([Request(0, 8)], seed=0, step=1, group_offset=3)
    assert engine.calls[0][1] == 4 and engine.calls[1][1] == 4  # 4 drafts, then 4 refinements
    assert b.num_seqs == 4 and b.group_ids.tolist() == [3] * 4 and b.rewards.tolist() == [1, 1, 1, 1]
    assert (
        rows_text(b, "prompt")[0]
        == "U:q0\n\nHere is a previous attempt at this problem:\n7\nWrite an improved solution.\nA:"
    )
    m = part.pop_metrics()
    assert m["rollout/igrpo_draft_reward_mean"] == 0.5 and m["rollout/igrpo_best_draft_reward_mean"] == 1.0


# ---- ExPO self-explanations ----
def test_self_explanation_enters_the_group_under_the_plain_prompt():
    """Prompt 0's group is all wrong; the policy, shown "The correct final answer is 7", answers "7":
    that sample replaces the group's last sample with the plain prompt and is flagged expo_positive.
    Rewards [0, 0, 0, 1]; the part asks for recomputed old log-probs."""
    from anypo.rollout import SelfExplain, SelfExplainConfig

    def reply(text, k):
        return "7" if "The correct final answer is 7." in text else "0"

    groups, engine = make_groups(reply, EX, G=4)
    assert SelfExplainConfig().needs_recomputed_old_logprobs
    b = SelfExplain(SelfExplainConfig(), groups).collect([Request(0, 4)], seed=0, step=1)
    assert engine.calls[1][0] == ["U:q0\n\nThe correct final answer is 7. Explain step by step how to reach it.\nA:"]
    assert b.rewards.tolist() == [0, 0, 0, 1] and b.extras["expo_positive"] == [0.0, 0.0, 0.0, 1.0]
    assert rows_text(b, "prompt") == ["U:q0\nA:"] * 4 and rows_text(b)[3] == "7"


def test_expo_sft_by_hand_and_gradcheck():
    """Rows 0 and 2 flagged, lp = [[-1, -2, pad], [-3, pad, pad], [-0.5, -0.5, -1]]: the flagged tokens sum
    to -1 - 2 - 0.5 - 0.5 - 1 = -5, over the 6 response tokens of the batch: nll = 5/6, loss = coef 5/6;
    d loss / d lp = -coef / 6 on flagged tokens, 0 elsewhere. Float64 finite differences agree."""
    from anypo.regularizers import ExPOSFT
    from anypo.regularizers.expo import expo_sft
    from anypo.types import PolicyOutput

    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    lp = torch.tensor(
        [[-1.0, -2.0, 9.0], [-3.0, 9.0, 9.0], [-0.5, -0.5, -1.0]], dtype=torch.float64, requires_grad=True
    )
    batch = RolloutBatch(
        mask, torch.tensor([0, 0, 1]), torch.zeros(3, dtype=torch.float64), extras={"expo_positive": [1.0, 0.0, 1.0]}
    )
    out = expo_sft(PolicyOutput(logprobs=lp), batch, ExPOSFT(coef=0.5))
    assert out.loss.item() == pytest.approx(0.5 * 5 / 6) and out.metrics["expo/sft_nll"] == pytest.approx(5 / 6)
    out.loss.backward()
    expected = -0.5 / 6 * torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.float64)
    assert torch.allclose(lp.grad, expected)
    x = lp.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: expo_sft(PolicyOutput(logprobs=t), batch, ExPOSFT(coef=0.5)).loss, (x,))


# ---- VSPO value sampling and PRS ----
def test_task_value_and_value_refills():
    """v = 0.5 (1 - p) + 0.5 * 4 p (1 - p): p = 0 -> 0.5, p = 0.5 -> 0.75, p = 1 -> 0. Six prompts, B = 2:
    the first draw of a step is the uniform order; after it, prompts 0-3 are observed (0, 1 always
    right: v = 0; 2, 3 always wrong: v = 0.5); a refill in the same step never repeats a drawn prompt
    and never picks a solved one (v = 0). (When fewer than B unsolved, undrawn prompts remain, a refill
    falls back to the uniform order.)"""
    from anypo.samplers import ValueSampler, ValueSamplingConfig
    from anypo.samplers.curricula import task_value

    np.testing.assert_allclose(task_value(np.array([0.0, 0.5, 1.0]), 0.5), [0.5, 0.75, 0.0])
    s = ValueSampler(ValueSamplingConfig(), 6, 2, seed=0)
    first = s.next_prompts(1)
    assert first == UniformSamplerOrder(6, 2, 0)
    correct = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    s.observe(RolloutBatch(torch.ones(8, 2), torch.arange(4).repeat_interleave(2), torch.tensor(correct),
                           extras={"prompt_index": [0, 0, 1, 1, 2, 2, 3, 3], "correct": correct}))  # fmt: skip
    refill = s.next_prompts(1)
    assert not set(refill) & ({0, 1} | set(first)) and len(set(refill)) == 2
    keep = s.keep(RolloutBatch(torch.ones(4, 2), torch.tensor([0, 0, 1, 1]), torch.tensor([1.0, 0.0, 1.0, 1.0])))
    assert keep.tolist() == [True, True, False, False] and s.pop_metrics()["dropped_groups"] == 1.0


def UniformSamplerOrder(n: int, b: int, seed: int) -> list[int]:
    """The first ``b`` prompts of the uniform sampler's seeded first epoch."""
    return np.random.default_rng([seed, 0]).permutation(n).tolist()[:b]


def test_staged_reward_by_hand_and_in_a_batch():
    """format_steps 5, weight 0.2: at step 3 r = f (format only); at step 6 r = 0.2 f + 0.8 f c:
    (f, c) = (1, 1) -> 1.0, (1, 0) -> 0.2, (0, 0) -> 0. In a scripted group at step 6 the replies "7"
    (right), "5" (a number, wrong), "x" (no number) get [1.0, 0.2, 0.0]."""
    from anypo.rollout import ProgressiveReward, ProgressiveRewardConfig
    from anypo.rollout.shaping import staged_reward

    cfg = ProgressiveRewardConfig()
    assert [staged_reward(f, c, 3, cfg) for f, c in ((1, 1), (1, 0), (0, 0))] == [1.0, 1.0, 0.0]
    assert [staged_reward(f, c, 6, cfg) for f, c in ((1, 1), (1, 0), (0, 0))] == pytest.approx([1.0, 0.2, 0.0])
    groups, _ = make_groups(lambda text, k: ["7", "5", "x"][k], EX, G=3)
    b = ProgressiveReward(cfg, groups).collect([Request(0, 3)], seed=0, step=6)
    assert b.rewards.tolist() == pytest.approx([1.0, 0.2, 0.0]) and b.extras["correct"] == [1.0, 0.0, 0.0]


# ---- contract of the rollout parts of this family ----
OURS = [
    "groups",
    "scaf_hints",
    "ghpo_hints",
    "xrpo_allocation",
    "experience_replay",
    "difficulty_aug",
    "dataset_reset",
    "draft_refine",
    "self_explain",
    "progressive_reward",
]


@pytest.mark.parametrize("name", OURS)
def test_rollout_part_contract(name):
    """Every part: a frozen config citing its source, and ``collect`` returns one group per request
    with ids ``offset + k`` in request order, per-row extras (prompt index, guided, roll-in count),
    old log-probs 0 and mask 0 together off the generated tokens, float metrics, and a JSON state
    that restores. Scripted engine: prompt 0 half right, prompt 1 never."""
    import dataclasses

    from anypo.registry import get

    Part, Cfg = get("rollout", name)
    assert dataclasses.is_dataclass(Cfg) and Cfg.__dataclass_params__.frozen and "http" in (Cfg.__doc__ or "")
    ex = [
        Example("q0", "7", solution="Let x=3. So 7.\nAnswer: 7", hints=("h1", "h2")),
        Example("q1", "5", hints=("g",)),
    ]
    groups, _ = make_groups(lambda text, k: "7" if (text.startswith("U:q0") and k % 2 == 0) else "0", ex, G=4)
    part = Part(Cfg(), groups)
    b = part.collect([Request(0, 4), Request(1, 4)], seed=0, step=100, group_offset=6)
    gids = b.group_ids.tolist()
    assert set(gids) == {6, 7} and gids == sorted(gids)
    assert all(int(i) == g - 6 for i, g in zip(b.extras["prompt_index"], gids, strict=True))
    for key in ("guided", "rollin_tokens", "text", "components"):
        assert len(b.extras[key]) == b.num_seqs
    assert b.response_mask.sum(1).min() >= 1 and (b.old_logprobs[b.response_mask == 0] == 0).all()
    assert all(isinstance(v, float) for v in part.pop_metrics().values())
    r = Part(Cfg(), groups)
    r.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert json.dumps(r.state_dict()) == json.dumps(part.state_dict())


def test_config_check_refuses_groups_too_small_for_drafts():
    """iGRPO splits a group into drafts and refinements: G = 2 would leave one refinement (no group
    baseline); the config check says so in one line, G = 3 passes."""
    from anypo.algorithms import PRESETS
    from anypo.config import TrainConfig
    from anypo.validate import train_config_problems

    bad = train_config_problems(TrainConfig(algo=PRESETS["igrpo"].build(), samples_per_prompt=2))
    assert any("at least 3 samples" in p for p in bad)
    assert not any(
        "at least 3" in p
        for p in train_config_problems(TrainConfig(algo=PRESETS["igrpo"].build(), samples_per_prompt=3))
    )
