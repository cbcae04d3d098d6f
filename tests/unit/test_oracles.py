"""Preference oracles (anypo.oracles): Bradley-Terry on the verifier, the intransitive majority
oracle, and the exact Nash equilibrium of a finite preference game. Expected values are derived by
hand in each docstring."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

from anypo.oracles import (
    MajorityOracle,
    OracleConfig,
    VerifierBT,
    arithmetic_criteria,
    bt_prob,
    exploitability,
    hard_label,
    majority_prob,
    make_oracle,
    nash,
    preference_matrix,
    tv_distance,
)
from anypo.oracles.base import PreferenceOracle
from anypo.tasks import get_task
from anypo.tasks.base import Example

EX = Example("What is 23 + 45?\nPut the final answer after 'Answer:'.", "68")


# ---- Bradley-Terry on the verifier ----


def test_bt_prob_by_hand():
    """sigmoid((1.1 - 0.1) / 0.5) = sigmoid(2) = 1 / (1 + e^-2) = 0.8807970779778823; the reverse pair
    is 1 - that; at T = 0 the hard label: 1, 0, or 1/2 on a tie; NaN propagates."""
    assert bt_prob(1.1, 0.1, 0.5) == pytest.approx(0.8807970779778823, abs=1e-12)
    assert bt_prob(0.1, 1.1, 0.5) == pytest.approx(1 - 0.8807970779778823, abs=1e-12)
    assert (bt_prob(1.1, 0.1, 0.0), bt_prob(0.1, 1.1, 0.0), bt_prob(1.0, 1.0, 0.0)) == (1.0, 0.0, 0.5)
    assert bt_prob(1.0, 1.0, 0.3) == 0.5
    assert math.isnan(bt_prob(math.nan, 1.0, 0.0))
    assert bt_prob(1000.0, 0.0, 1e-3) == 1.0 and bt_prob(0.0, 1000.0, 1e-3) == 0.0  # no overflow


def test_verifier_bt_on_the_addition_task():
    """The addition task's default reward is correctness (1) + 0.1 x format ('Answer: <number>'):
    a correct formatted answer scores 1.1, a wrong formatted one 0.1, a correct bare '68' 1.0, 'no'
    0. So P(correct > wrong) = sigmoid(1 / T): T = 0.5 -> sigmoid(2) = 0.880797; T = 0 -> 1;
    correct vs bare correct: sigmoid(0.1 / 0.5) = sigmoid(0.2) = 0.549834."""
    task = get_task("addition")
    right, wrong, bare, none = "23 + 45 = 68.\nAnswer: 68", "Answer: 69", "68", "no"
    soft = VerifierBT(task.reward(), temperature=0.5)
    p = soft.prob([EX] * 3, [right, wrong, right], [wrong, right, bare])
    assert p.dtype == torch.float64 and p.shape == (3,)
    assert p.tolist() == pytest.approx([0.8807970779778823, 0.11920292202211769, 0.549833997312478], abs=1e-9)
    hard = VerifierBT(task.reward(), temperature=0.0)
    assert hard.prob([EX] * 3, [right, none, bare], [wrong, none, none]).tolist() == [1.0, 0.5, 1.0]
    assert soft.gold([EX] * 4, [right, wrong, bare, none]).tolist() == pytest.approx([1.1, 0.1, 1.0, 0.0])
    assert soft.num_unjudged == 0 and isinstance(soft, PreferenceOracle)


def test_unjudged_pairs_are_nan_and_counted():
    """A reward whose evaluation failed (RewardResult.error) leaves the pair unjudged: NaN, counted."""

    class Flaky:
        def __call__(self, sample):
            class R:
                score = 0.0
                error = "boom" in sample.completion

            return R()

    o = VerifierBT(Flaky(), 0.0)
    p = o.prob([EX] * 3, ["a", "boom", "a"], ["b", "c", "boom"])
    assert p[0].item() == 0.5 and math.isnan(p[1].item()) and math.isnan(p[2].item())
    assert o.num_unjudged == 2
    m = MajorityOracle([lambda x, y: None if y == "bad" else len(y)])
    assert math.isnan(m.prob([EX], ["bad"], ["ok"]).item()) and m.num_unjudged == 1
    m2 = MajorityOracle([lambda x, y: 1 / 0])  # a grader that raises does not stop the run
    assert math.isnan(m2.prob([EX], ["a"], ["b"]).item()) and m2.num_unjudged == 1


def test_bad_temperature_and_batch_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="temperature"):
        VerifierBT(get_task("addition").reward(), -1.0)
    with pytest.raises(ValueError, match="as many prompts"):
        VerifierBT(get_task("addition").reward()).prob([EX], ["a", "b"], ["c", "d"])


def test_preference_matrix_is_a_preference_matrix():
    """P[i, j] + P[j, i] = 1 and P[i, i] = 1/2; entries from the oracle: scores (1.1, 0.1, 1.0) at
    T = 0 give P[0, 1] = 1, P[0, 2] = 1, P[1, 2] = 0."""
    o = VerifierBT(get_task("addition").reward(), 0.0)
    P = preference_matrix(o, EX, ["23 + 45 = 68.\nAnswer: 68", "Answer: 69", "68"])
    assert P.tolist() == [[0.5, 1.0, 1.0], [0.0, 0.5, 0.0], [0.0, 1.0, 0.5]]
    assert torch.allclose(P + P.T, torch.ones(3, 3, dtype=torch.float64))


def test_preference_matrices_batch_every_prompt_in_one_call():
    """Two prompts with 3 and 2 responses: one prob() call with the 3 + 1 pairs, each matrix equal to
    preference_matrix of its own prompt (scores 1.1, 0.1, 1.0 and 0.1, 1.1 at T = 0)."""

    class Counting(VerifierBT):
        calls = 0

        def prob(self, xs, ys, y2s):
            Counting.calls += 1
            return super().prob(xs, ys, y2s)

    o = Counting(get_task("addition").reward(), 0.0)
    right, wrong, bare = "23 + 45 = 68.\nAnswer: 68", "Answer: 69", "68"
    from anypo.oracles import preference_matrices

    Ms = preference_matrices(o, [EX, EX], [[right, wrong, bare], [wrong, right]])
    assert Counting.calls == 1
    assert Ms[0].tolist() == [[0.5, 1.0, 1.0], [0.0, 0.5, 0.0], [0.0, 1.0, 0.5]]
    assert Ms[1].tolist() == [[0.5, 0.0], [1.0, 0.5]]
    with pytest.raises(ValueError, match="one group of responses per prompt"):
        preference_matrices(o, [EX], [])


def test_hard_label():
    assert (hard_label(0.7), hard_label(0.2), hard_label(0.5), hard_label(math.nan)) == (1, 0, None, None)


# ---- the intransitive oracle ----


def test_majority_of_three_rankings_is_a_condorcet_cycle():
    """Grades (3, 1, 2), (2, 3, 1), (1, 2, 3): A beats B on criteria 1 and 3, B beats C on 1 and 2, C
    beats A on 2 and 3, so A > B > C > A with probability 1 each."""
    A, B, C = (3, 1, 2), (2, 3, 1), (1, 2, 3)
    assert (majority_prob(A, B), majority_prob(B, C), majority_prob(C, A)) == (1.0, 1.0, 1.0)
    assert (majority_prob(B, A), majority_prob(A, A)) == (0.0, 0.5)
    assert majority_prob((1, 1, 0), (1, 1, 0)) == 0.5 and majority_prob((2, 0, 0), (1, 0, 0)) == 1.0  # ties skipped


def test_default_criteria_make_a_cycle_on_real_answers():
    """Budget 10 characters. Grades (correct, length, format):
    A 'The sum is 68' (13 chars): correct 2 (last-number fallback 68), length -3, format 0 (no marker);
    B 'Let me add these.\\nAnswer: 12' (28 chars): wrong number 1, length -18, format 3 (marker, bare
    number, nothing after);
    C 'Answer: ?' (9 chars): no number 0, length 0, format 2 (marker, not a number, nothing after).
    A vs B: correct A, length A, format B -> A. B vs C: correct B, length C, format B -> B.
    C vs A: correct A, length C, format C -> C. A cycle."""
    o = MajorityOracle(arithmetic_criteria(10))
    A, B, C = "The sum is 68", "Let me add these.\nAnswer: 12", "Answer: ?"
    assert [o.grades(EX, t) for t in (A, B, C)] == [[2.0, -3.0, 0.0], [1.0, -18.0, 3.0], [0.0, 0.0, 2.0]]
    assert o.prob([EX] * 3, [A, B, C], [B, C, A]).tolist() == [1.0, 1.0, 1.0]
    P = preference_matrix(o, EX, [A, B, C])
    assert [float(v) for v in nash(P.tolist())] == pytest.approx([1 / 3] * 3)  # rock-paper-scissors
    assert o.gold([EX] * 3, [A, B, C]).tolist() == [1.0, 0.0, 0.0]


def test_make_oracle():
    task = get_task("addition")
    assert isinstance(make_oracle(OracleConfig(), task), VerifierBT)
    assert isinstance(make_oracle(OracleConfig(kind="intransitive", length_budget=5), task), MajorityOracle)
    from anypo.oracles import oracle_config_problems

    probs = oracle_config_problems(OracleConfig(kind="x", temperature=-1, length_budget=0))  # type: ignore[arg-type]
    assert len(probs) == 3 and "--oracle.kind" in probs[0] and "--oracle.temperature" in probs[1]


# ---- the exact Nash equilibrium ----

RPS = [[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]  # rock loses to paper, beats scissors


def test_rock_paper_scissors_nash_is_uniform():
    """Every pure strategy is beaten by another with probability 1; by symmetry the unique Nash is
    (1/3, 1/3, 1/3), exactly."""
    assert nash(RPS) == [Fraction(1, 3)] * 3
    assert exploitability(RPS, [1 / 3] * 3) == pytest.approx(0.0, abs=1e-15)
    assert exploitability(RPS, [1.0, 0.0, 0.0]) == 0.5  # paper beats pure rock always: 1 - 1/2


def test_weighted_cycle_nash_by_hand():
    """A beats B by a (P_AB = 1/2 + a), B beats C by c, C beats A by b. With A = P - 1/2 and q = (c, b, a)
    / (a + b + c): (Aq)_A = a q_B - b q_C = (ab - ba) / s = 0, (Aq)_B = -a q_A + c q_C = 0,
    (Aq)_C = b q_A - c q_B = 0, so q is the Nash. a = 3/8, b = 1/4, c = 1/8 (P_AB = 7/8, P_CA = 3/4,
    P_BC = 5/8, all exact binary floats): q = (1/8, 2/8, 3/8) / (6/8) = (1/6, 1/3, 1/2).
    Against pure A the best response is C: P_CA - 1/2 = 1/4."""
    P = [[0.5, 0.875, 0.25], [0.125, 0.5, 0.625], [0.75, 0.375, 0.5]]
    assert nash(P) == [Fraction(1, 6), Fraction(1, 3), Fraction(1, 2)]
    assert exploitability(P, [1.0, 0.0, 0.0]) == 0.25


def test_condorcet_winner_and_spec_vector():
    """A transitive order A > B > C: the Condorcet winner A is the (pure) Nash. Spec section 3's
    matrix (A > B > C > A, all beat D): D is dominated, the cycle gives (1/3, 1/3, 1/3, 0)."""
    P = [[0.5, 0.8, 0.9], [0.2, 0.5, 0.7], [0.1, 0.3, 0.5]]
    assert nash(P) == [1, 0, 0]
    spec = [[0.5, 1, 0, 1], [0, 0.5, 1, 1], [1, 0, 0.5, 1], [0, 0, 0, 0.5]]
    assert nash(spec) == [Fraction(1, 3)] * 3 + [0]
    assert tv_distance([1, 0, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0]) == pytest.approx(2 / 3)


def test_nash_of_random_games_is_unexploitable():
    """Property, checked independently of the solver: for the returned q, every candidate's win rate
    against q is at most 1/2, exactly (Fractions), i.e. exploitability 0; q is a distribution."""
    rng = random.Random(0)
    for K in (1, 2, 3, 5, 8):
        P = [[Fraction(1, 2)] * K for _ in range(K)]
        for i in range(K):
            for j in range(i + 1, K):
                v = Fraction(rng.randint(0, 16), 16)
                P[i][j], P[j][i] = v, 1 - v
        q = nash(P)
        assert sum(q) == 1 and all(v >= 0 for v in q)
        assert max(sum(P[i][j] * q[j] for j in range(K)) for i in range(K)) == Fraction(1, 2)


def test_nash_rejects_malformed_matrices():
    with pytest.raises(ValueError, match="square"):
        nash([[0.5, 0.5]])
    with pytest.raises(ValueError, match="P_ij \\+ P_ji = 1"):
        nash([[0.5, 0.7], [0.7, 0.5]])
    with pytest.raises(ValueError, match="probability"):
        nash([[0.5, 1.5], [-0.5, 0.5]])
    with pytest.raises(ValueError, match="probability vector"):
        exploitability(RPS, [0.5, 0.5, 0.5])


# ---- a plug-in judge ----


def test_parse_verdict():
    from anypo.oracles import parse_verdict

    assert [parse_verdict(v) for v in (0.3, 1, "A", "b", "Tie", "so the better one is B.", "Answer: A")] == [
        0.3, 1.0, 1.0, 0.0, 0.5, 0.0, 1.0,
    ]  # fmt: skip
    assert all(math.isnan(parse_verdict(v)) for v in (None, True, 1.5, -0.1, "both", "A or B?", [1]))


def test_judge_oracle_corrects_position_bias_and_counts_failures(tmp_path):
    """A judge that always says "A" (pure position bias): swapped, (1 + 1 - 1)/2 = 1/2, a tie. A judge
    preferring the shorter response: P(short > long) = (1 + 1 - 0)/2 = 1, P(long > short) = 0. Without
    swap the biased judge gives 1. None, garbage or an exception: NaN, counted."""
    from anypo.oracles import JudgeOracle

    always_a = JudgeOracle(lambda p, a, b: ["A"] * len(a))
    assert always_a.prob([EX, EX], ["x", "yy"], ["yy", "x"]).tolist() == [0.5, 0.5]
    assert JudgeOracle(lambda p, a, b: ["A"] * len(a), swap=False).prob([EX], ["x"], ["yy"]).tolist() == [1.0]
    shorter = JudgeOracle(lambda p, a, b: ["A" if len(u) < len(v) else "B" for u, v in zip(a, b, strict=True)])
    assert shorter.prob([EX, EX], ["x", "yy"], ["yy", "x"]).tolist() == [1.0, 0.0]
    flaky = JudgeOracle(lambda p, a, b: [None if u == "?" else "I pick A" for u in a], swap=False)
    p = flaky.prob([EX, EX], ["?", "x"], ["y", "y"])
    assert math.isnan(p[0].item()) and p[1].item() == 1.0 and flaky.num_unjudged == 1
    broken = JudgeOracle(lambda p, a, b: 1 / 0)
    assert torch.isnan(broken.prob([EX], ["a"], ["b"])).all() and broken.num_unjudged == 1
    assert torch.isnan(broken.gold([EX], ["a"])).all()
    with pytest.raises(ValueError, match="returned 1 verdicts for 2 pairs"):
        JudgeOracle(lambda p, a, b: ["A"]).prob([EX, EX], ["a", "b"], ["c", "d"])
    seen = []
    JudgeOracle(lambda p, a, b: seen.extend(p) or ["A"] * len(a), swap=False).prob([EX], ["a"], ["b"])
    assert seen == [EX.prompt]  # the judge sees the prompt text


def test_judge_from_a_file(tmp_path):
    """--oracle.kind judge --oracle.judge file.py:fn loads the plug-in; without a judge: one clear problem."""
    from anypo.oracles import JudgeOracle, oracle_config_problems

    f = tmp_path / "my_judge.py"
    f.write_text(
        "def judge(prompts, first, second):\n    return ['A' if len(a) > len(b) else 'B' for a, b in zip(first, second)]\n"
    )
    o = make_oracle(OracleConfig(kind="judge", judge=f"{f}:judge"), None)
    assert isinstance(o, JudgeOracle) and o.prob([EX], ["long"], ["s"]).tolist() == [1.0]
    probs = oracle_config_problems(OracleConfig(kind="judge"))
    assert len(probs) == 1 and "--oracle.judge" in probs[0]
