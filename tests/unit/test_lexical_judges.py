"""The lexical judges (``anypo.rewards.lexical``, ``anypo.oracles.lexical``) and the
``positive_continuation`` task: scores derived from VADER's lexicon and formula, orderings for the
profanity classifier, Bradley-Terry probabilities by hand, and a one-line error naming the ``judges``
extra when a package is missing.

VADER (Hutto & Gilbert 2014): ``compound = round(x / sqrt(x^2 + 15), 4)`` with ``x`` the sum of the
words' lexicon valences (``vader_lexicon.txt``: great 3.1, good 1.9, terrible -2.1), plus 0.292 per
``!`` (at most 4) added to a positive sum; a text without lexicon words scores 0.
"""

from __future__ import annotations

import math
import sys

import pytest

from anypo.errors import UserError
from anypo.oracles import OracleConfig, make_oracle, oracle_config_problems
from anypo.oracles.lexical import LexicalOracle, lexical_oracle
from anypo.rewards import NonToxicity, VaderSentiment, combine
from anypo.rewards import lexical as lex
from anypo.tasks import get_task
from anypo.types import Sample

judges = pytest.mark.skipif(
    bool(lex.missing_judge_package("vader") or lex.missing_judge_package("profanity")),
    reason="the judges extra is not installed (pip install 'anypo[judges]'; make setup installs it)",
)


def vader_by_hand(x: float) -> float:
    return round(x / math.sqrt(x * x + 15.0), 4)


@judges
def test_vader_scores_follow_the_lexicon():
    """great (3.1) -> 0.6249, good (1.9) -> 0.4404, terrible (-2.1) -> -0.4767; four "great" sum to
    12.4 -> 0.9545 (repetition games it); "GREAT!!!" = 3.1 + 3 x 0.292 = 3.976 -> 0.7163 (all caps
    add nothing when every word is capitalised; the exclamation marks do); no sentiment word -> 0."""
    texts = ["great", "good", "terrible", "great great great great", "GREAT!!!", "the table is by the door", ""]
    got = lex.vader_scores(texts)
    expected = [vader_by_hand(3.1), vader_by_hand(1.9), vader_by_hand(-2.1), vader_by_hand(12.4)]
    expected += [vader_by_hand(3.1 + 3 * 0.292), 0.0, 0.0]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[3] > got[0] > got[1] > 0.0 > got[2]
    # the registered reward part scores the completion only, not the prompt
    fn = combine([(VaderSentiment(), 1.0)])
    assert fn(Sample(prompt="terrible terrible", completion="great", answer="")).score == pytest.approx(0.6249)


@judges
def test_non_toxicity_orders_polite_above_insulting():
    """1 - P(offensive): a polite reply near 1, an insult ("stupid", "idiot": offensive n-grams of the
    training data) near 0; the empty reply is inoffensive (the judge scores wording only)."""
    polite, insult = "Thank you for your help, have a nice day.", "You are a stupid idiot."
    s = lex.non_toxicity_scores([polite, insult, ""])
    assert s[0] > 0.9 and s[1] < 0.1 and s[2] > 0.5
    assert all(0.0 <= v <= 1.0 for v in s)
    assert lex.non_toxicity_scores([]) == []
    fn = combine([(NonToxicity(), 1.0)])
    assert fn(Sample(prompt="", completion=polite, answer="")).score == pytest.approx(s[0])


def test_bradley_terry_by_hand_on_a_fake_score():
    """score = number of characters, T = 2: P("aaa" > "a") = sigmoid((3 - 1) / 2) = 1 / (1 + e^-1)
    = 0.7310585786; the reverse is 1 - that; a response against itself 1/2; both sides are scored in
    one batched call per prob; gold is the score."""
    calls = []

    def score(texts):
        calls.append(list(texts))
        return [float(len(t)) for t in texts]

    o = LexicalOracle(score, temperature=2.0)
    p = o.prob([None] * 3, ["aaa", "a", "ab"], ["a", "aaa", "ab"]).tolist()
    assert p == pytest.approx([1 / (1 + math.exp(-1.0)), 1 - 1 / (1 + math.exp(-1.0)), 0.5], abs=1e-15)
    assert calls == [["aaa", "a", "ab", "a", "aaa", "ab"]]
    assert o.gold([None, None], ["abcd", ""]).tolist() == [4.0, 0.0]
    hard = LexicalOracle(score, temperature=0.0)
    assert hard.prob([None] * 3, ["aa", "a", "b"], ["a", "aa", "c"]).tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="oracle.temperature"):
        LexicalOracle(score, temperature=-1.0)


@judges
def test_vader_oracle_probability_by_hand():
    """s(great) = 0.6249, s(terrible) = -0.4767, T = 0.5: P = 1 / (1 + exp(-(0.6249 + 0.4767) / 0.5))
    = 1 / (1 + exp(-2.2032)) = 0.900468...; the two-sided probabilities sum to 1."""
    o = make_oracle(OracleConfig(kind="vader", temperature=0.5), task=None)
    p = o.prob([None, None], ["great", "terrible"], ["terrible", "great"]).tolist()
    expected = 1.0 / (1.0 + math.exp(-(0.6249 + 0.4767) / 0.5))
    assert p[0] == pytest.approx(expected, abs=1e-12) and p[0] + p[1] == pytest.approx(1.0, abs=1e-15)
    assert o.gold([None], ["great"]).item() == pytest.approx(0.6249)
    prof = make_oracle(OracleConfig(kind="profanity"), task=None)  # hard labels
    assert prof.prob([None], ["Have a nice day."], ["You are a stupid idiot."]).item() == 1.0


def hide(monkeypatch, module: str) -> None:
    """Make ``import module`` (and its submodules) fail, as when the package is not installed."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] or [module]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    ("judge", "module", "call"),
    [
        ("vader", "vaderSentiment", lambda: lex.vader_scores(["great"])),
        ("profanity", "profanity_check", lambda: lex.non_toxicity_scores(["hello"])),
    ],
)
def test_missing_package_gives_a_one_line_error_naming_the_extra(monkeypatch, judge, module, call):
    """With the package hidden (``sys.modules[name] = None`` makes its import fail), the scorer, the
    reward runner (which otherwise turns a failing reward into 0), the oracle config check and the
    oracle factory all say, in one line, which extra to install."""
    hide(monkeypatch, module)
    lex._vader.cache_clear()
    lex._profanity.cache_clear()
    msg = f"the {judge} judge needs the {module} package, which is not installed: pip install 'anypo[judges]'"
    with pytest.raises(UserError) as e:
        call()
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)
    part = VaderSentiment() if judge == "vader" else NonToxicity()
    with pytest.raises(UserError, match=r"anypo\[judges\]"):
        combine([(part, 1.0)])(Sample(prompt="", completion="hi", answer=""))
    (problem,) = oracle_config_problems(OracleConfig(kind=judge))
    assert problem.startswith(f"--oracle.kind is '{judge}': {msg}")
    with pytest.raises(UserError, match=r"anypo\[judges\]"):
        lexical_oracle(judge)
    lex._vader.cache_clear()
    lex._profanity.cache_clear()


def test_cli_reports_the_missing_extra_before_loading_anything(monkeypatch, tmp_path, capsys):
    from anypo import cli

    hide(monkeypatch, "vaderSentiment")
    argv = ["train", "online_dpo", "--smoke", "--task.name", "positive_continuation", "--oracle.kind", "vader"]
    assert cli.main([*argv, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "anypo: error: --oracle.kind is 'vader': the vader judge needs the vaderSentiment package" in err
    assert "pip install 'anypo[judges]'" in err and not list(tmp_path.iterdir())


@judges
def test_positive_continuation_task():
    """512 prompts (16 openings x 32 subjects); held-out and training splits are disjoint; no reference
    answer; the default reward is VADER on the completion."""
    from anypo.tasks.continuation import INSTRUCTION, OPENINGS, SUBJECTS

    assert len({o.format(s=s) for o in OPENINGS for s in SUBJECTS}) == 512
    task = get_task("positive_continuation", num_heldout=50)
    held, train = task.heldout_examples(), task.train_examples(300)
    assert len({e.key for e in held}) == 50
    assert not {e.key for e in held} & {e.key for e in train}
    ex = train[0]
    assert ex.prompt == f'Continue this text: "{ex.key}"\n{INSTRUCTION}' and ex.answer == ""
    reward = task.reward()
    assert reward.names == ["vader_sentiment"]
    good, bad = (reward(ex.to_sample(t)).score for t in ("It was great, I loved it.", "It was terrible."))
    assert good > 0 > bad
