import math

import pytest

from anypo.evaluate import default_ks, mean_pass_at_k, pass_at_k


def test_pass_at_k_by_hand():
    """pass@k = 1 - C(n-c, k) / C(n, k).

    n=5, c=2: pass@1 = 2/5 = 0.4; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7;
    pass@4 = 1 - C(3,4)/C(5,4) = 1 - 0 = 1 (fewer than k wrong samples).
    """
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 5) == 0.0


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match="at least 4 samples"):
        pass_at_k(3, 1, 4)


def test_mean_over_prompts_and_ks():
    # prompt 1: 1 of 2 correct -> pass@1 0.5, pass@2 1; prompt 2: 0 of 2 -> 0, 0
    res = mean_pass_at_k([[True, False], [False, False]], [1, 2])
    assert res == {1: pytest.approx(0.25), 2: pytest.approx(0.5)}
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]


def test_pass_at_k_by_difficulty_by_hand():
    """Prompts of levels [0, 3, 0, None, 3] with outcomes (n = 2):
    level 0: [T, F] and [T, T] -> pass@1 (0.5 + 1) / 2 = 0.75, pass@2 (1 + 1) / 2 = 1;
    level 3: [F, F] and [F, T] -> pass@1 (0 + 0.5) / 2 = 0.25, pass@2 (0 + 1) / 2 = 0.5;
    the prompt without a level is left out; a task without levels gives no keys."""
    from anypo.evaluate import pass_at_k_by_difficulty

    correct = [[True, False], [False, False], [True, True], [True, True], [False, True]]
    res = pass_at_k_by_difficulty(correct, [0, 3, 0, None, 3], [1, 2])
    assert res == {
        "eval/pass@1/level_0": pytest.approx(0.75),
        "eval/pass@2/level_0": pytest.approx(1.0),
        "eval/prompts/level_0": 2.0,
        "eval/pass@1/level_3": pytest.approx(0.25),
        "eval/pass@2/level_3": pytest.approx(0.5),
        "eval/prompts/level_3": 2.0,
    }
    assert list(res)[:3] == ["eval/pass@1/level_0", "eval/pass@2/level_0", "eval/prompts/level_0"]
    assert pass_at_k_by_difficulty(correct, [None] * 5, [1]) == {}
    with pytest.raises(ValueError, match="5 prompts' outcomes but 4 difficulty levels"):
        pass_at_k_by_difficulty(correct, [0, 0, 0, 0], [1])
    # levels 10 and 2 sort numerically, not as text
    assert list(pass_at_k_by_difficulty([[True], [False]], [10, 2], [1])) == [
        "eval/pass@1/level_2",
        "eval/prompts/level_2",
        "eval/pass@1/level_10",
        "eval/prompts/level_10",
    ]
