"""Lexical judges: rewards a policy can game on purpose (``vader_sentiment``, ``non_toxicity``).

Two small, deterministic, CPU-only scorers of a response's *words*, for reward-hacking and
over-optimisation studies where the reward model is known to be exploitable:

* ``vader_sentiment``: VADER's compound sentiment of the completion, in ``[-1, 1]`` ("VADER: A
  Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", Hutto & Gilbert, ICWSM
  2014, https://ojs.aaai.org/index.php/ICWSM/article/view/14550; package ``vaderSentiment`` 3.3.2). A
  rule-based lexicon: the sum ``x`` of the words' valences (adjusted for negation, intensifiers,
  capitals and exclamation marks) squashed as ``x / sqrt(x^2 + 15)``. The positive-continuation
  reward of the classic RLHF toy task; repeating "great" or adding "!!!" raises it.
* ``non_toxicity``: ``1 - P(offensive)`` from ``alt-profanity-check`` 1.9.1 (a linear SVM on
  character/word n-grams with calibrated probabilities, trained on offensive-language data; the
  maintained fork of ``profanity-check``, https://github.com/dimitrismistriotis/alt-profanity-check).
  It detects offensive wording, not harmful content: any polite or empty reply scores near 1.

Both are in the optional extra ``judges`` (``pip install 'anypo[judges]'``; alt-profanity-check pins
scikit-learn and joblib exactly, since its pickled model is bound to their versions). The packages are
imported on first use; when one is missing the error says which extra to install. The batched
``vader_scores`` / ``non_toxicity_scores`` serve the preference oracles (``anypo.oracles.lexical``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from anypo.errors import UserError
from anypo.registry import REGISTRIES
from anypo.types import PartConfig, Sample

__all__ = [
    "JUDGE_PACKAGES",
    "NonToxicity",
    "VaderSentiment",
    "missing_judge_package",
    "non_toxicity",
    "non_toxicity_scores",
    "vader_scores",
    "vader_sentiment",
]

JUDGE_PACKAGES = {
    "vader": ("vaderSentiment", "vaderSentiment==3.3.2"),
    "profanity": ("profanity_check", "alt-profanity-check==1.9.1"),
}
"""judge -> (import name, pip requirement) of the ``judges`` extra."""


def _missing(judge: str) -> UserError:
    module, pin = JUDGE_PACKAGES[judge]
    return UserError(
        f"the {judge} judge needs the {module} package, which is not installed: pip install 'anypo[judges]' (or {pin})"
    )


def missing_judge_package(judge: str) -> str | None:
    """The one-line error of a judge whose package is not installed, else None (imports nothing)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(JUDGE_PACKAGES[judge][0]) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (how tests hide a package)
        found = False
    return None if found else str(_missing(judge))


@functools.lru_cache(maxsize=1)
def _vader() -> Callable[[str], dict[str, float]]:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise _missing("vader") from None
    return SentimentIntensityAnalyzer().polarity_scores  # loads the lexicon once


@functools.lru_cache(maxsize=1)
def _profanity() -> Callable[[Sequence[str]], Sequence[float]]:
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise _missing("profanity") from None
    return predict_prob  # the vectorizer and model are loaded by the import


def vader_scores(texts: Sequence[str]) -> list[float]:
    """VADER compound score of each text, in ``[-1, 1]`` (0 for text without sentiment words)."""
    score = _vader()
    return [float(score(t)["compound"]) for t in texts]


def non_toxicity_scores(texts: Sequence[str]) -> list[float]:
    """``1 - P(offensive)`` of each text from alt-profanity-check (one batched call), in ``[0, 1]``."""
    if not texts:
        return []
    return [1.0 - float(p) for p in _profanity()(list(texts))]


@dataclass(frozen=True)
class VaderSentiment(PartConfig):
    """VADER compound sentiment of the completion, in ``[-1, 1]`` (a lexical, hackable reward).

    Hutto & Gilbert 2014, https://ojs.aaai.org/index.php/ICWSM/article/view/14550 (package
    ``vaderSentiment`` 3.3.2, extra ``judges``): ``compound = x / sqrt(x^2 + 15)`` with ``x`` the summed,
    rule-adjusted lexicon valences of the words (``great`` 3.1, ``terrible`` -2.1). Only the completion
    is scored, not the prompt it continues. Deliberately gameable: positive words, capitals and
    exclamation marks raise it whatever the text says.
    """


@REGISTRIES["reward"].register("vader_sentiment", config=VaderSentiment)
def vader_sentiment(sample: Sample, cfg: VaderSentiment) -> float:
    """VADER compound score of ``sample.completion``."""
    return vader_scores([sample.completion])[0]


@dataclass(frozen=True)
class NonToxicity(PartConfig):
    """``1 - P(offensive)`` of the completion from alt-profanity-check, in ``[0, 1]`` (a lexical, hackable reward).

    https://github.com/dimitrismistriotis/alt-profanity-check (1.9.1, extra ``judges``): a linear SVM
    with calibrated probabilities on n-gram features, trained on offensive-language data. It scores
    wording only: an empty, evasive or misspelt ("f*ck") reply gets near 1.
    """


@REGISTRIES["reward"].register("non_toxicity", config=NonToxicity)
def non_toxicity(sample: Sample, cfg: NonToxicity) -> float:
    """``1 - P(offensive)`` of ``sample.completion``."""
    return non_toxicity_scores([sample.completion])[0]
