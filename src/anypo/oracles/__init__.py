"""Preference sources (``prob(xs, ys, y2s) -> P(y > y2)``, batched, NaN = could not judge) and the
exact Nash equilibrium of a finite preference game.

* :class:`VerifierBT`: Bradley-Terry on the built-in tasks' verifiable reward, temperature ``T``
  (hard labels at ``T = 0``).
* :class:`JudgeOracle`: a plug-in pairwise judge (LLM, API, script), judged in both orders.
* :class:`RewardModelOracle`: Bradley-Terry on a learned reward model (``anypo train reward_model``).
* :class:`LexicalOracle`: Bradley-Terry on a lexical judge of the text (``vader`` sentiment,
  ``profanity``: non-toxicity), deliberately hackable reward models (extra ``judges``).
* :class:`MajorityOracle`: the majority of three graded verifiable criteria (correct, length budget,
  format): intransitive (Condorcet cycles).
* :func:`nash`, :func:`exploitability`: the exact symmetric Nash equilibrium over a finite candidate
  set by a rational-arithmetic simplex, and a policy's distance from it.
* :class:`OracleConfig` / :func:`make_oracle`: the oracle of a run's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from anypo.oracles.base import PreferenceOracle, hard_label, preference_matrices, preference_matrix
from anypo.oracles.intransitive import MajorityOracle, arithmetic_criteria, majority_prob
from anypo.oracles.judge import JudgeOracle, load_judge, parse_verdict
from anypo.oracles.lexical import LEXICAL_JUDGES, LexicalOracle, lexical_oracle
from anypo.oracles.nash import exploitability, nash, tv_distance
from anypo.oracles.reward_model import RewardModelOracle
from anypo.oracles.verifier_bt import VerifierBT, bt_prob

__all__ = [
    "JudgeOracle",
    "LexicalOracle",
    "MajorityOracle",
    "OracleConfig",
    "PreferenceOracle",
    "RewardModelOracle",
    "VerifierBT",
    "arithmetic_criteria",
    "bt_prob",
    "exploitability",
    "hard_label",
    "lexical_oracle",
    "load_judge",
    "majority_prob",
    "make_oracle",
    "nash",
    "parse_verdict",
    "preference_matrices",
    "preference_matrix",
    "tv_distance",
]


@dataclass(frozen=True)
class OracleConfig:
    """Which preference oracle judges the policy's samples."""

    kind: Literal["verifier_bt", "intransitive", "judge", "reward_model", "vader", "profanity", "same", "none"] = (
        "verifier_bt"
    )
    """verifier_bt: Bradley-Terry on the task's reward; intransitive: majority of three graded criteria;
    judge: the plug-in pairwise judge named by `judge`; reward_model: Bradley-Terry on the learned reward
    model in `reward_model`; vader / profanity: Bradley-Terry on a lexical judge of the text (VADER
    sentiment, 1 - P(offensive)), hackable on purpose (extra `judges`); same (an evaluation oracle
    only): the training oracle; none (the offline loop's evaluation oracle only): no oracle evaluation."""
    temperature: float = 0.0
    """verifier_bt / reward_model / vader / profanity: the Bradley-Terry temperature T (0: hard labels)."""
    length_budget: int = 40
    """intransitive: characters within which every response ties on the length criterion."""
    judge: str | None = None
    """judge: ``module:function`` or ``file.py:function``, a batched ``judge(prompts, first, second) -> verdicts``."""
    judge_swap: bool = True
    """judge: judge each pair in both orders and average (position-bias correction)."""
    reward_model: str | None = None
    """reward_model: the final/ directory of an `anypo train reward_model` run."""


def oracle_config_problems(cfg: OracleConfig, prefix: str = "oracle") -> list[str]:
    """Every problem of ``cfg`` (one message each naming the option and the fix)."""
    import math

    from anypo.rewards.lexical import missing_judge_package

    out = []
    if cfg.kind not in ("verifier_bt", "intransitive", "judge", "reward_model", *LEXICAL_JUDGES):
        out.append(
            f"--{prefix}.kind is {cfg.kind!r}: use verifier_bt, intransitive, judge, reward_model, vader or profanity"
        )
    elif cfg.kind in LEXICAL_JUDGES and (missing := missing_judge_package(cfg.kind)):
        out.append(f"--{prefix}.kind is {cfg.kind!r}: {missing}")
    if cfg.kind == "reward_model" and not cfg.reward_model:
        out.append(
            f"--{prefix}.reward-model is not set: oracle kind 'reward_model' needs the final/ directory of a reward_model run"
        )
    if cfg.kind == "judge" and not cfg.judge:
        out.append(
            f"--{prefix}.judge is not set: oracle kind 'judge' needs a judge function (module:function or file.py:function)"
        )
    if not (math.isfinite(cfg.temperature) and cfg.temperature >= 0):
        out.append(f"--{prefix}.temperature is {cfg.temperature}: it must be >= 0 (0 for hard labels)")
    if cfg.length_budget < 1:
        out.append(f"--{prefix}.length-budget is {cfg.length_budget}: it must be >= 1 character")
    return out


def make_oracle(cfg: OracleConfig, task: Any) -> PreferenceOracle:
    """The oracle ``cfg`` names, on ``task`` (its default reward for verifier_bt)."""
    if cfg.kind == "verifier_bt":
        return VerifierBT(task.reward(), cfg.temperature)
    if cfg.kind == "intransitive":
        return MajorityOracle(arithmetic_criteria(cfg.length_budget))
    if cfg.kind == "judge" and cfg.judge:
        return JudgeOracle(load_judge(cfg.judge), swap=cfg.judge_swap)
    if cfg.kind == "reward_model" and cfg.reward_model:
        return RewardModelOracle(cfg.reward_model, cfg.temperature)
    if cfg.kind in LEXICAL_JUDGES:
        return lexical_oracle(cfg.kind, cfg.temperature)
    raise ValueError(
        f"oracle.kind is {cfg.kind!r}: use verifier_bt, intransitive, judge (with oracle.judge), reward_model, vader or profanity"
    )
