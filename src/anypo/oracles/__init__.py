"""Preference sources (``prob(xs, ys, y2s) -> P(y > y2)``, batched, NaN = could not judge) and the
exact Nash equilibrium of a finite preference game.

* :class:`VerifierBT`: Bradley-Terry on the built-in tasks' verifiable reward, temperature ``T``
  (hard labels at ``T = 0``).
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
from anypo.oracles.nash import exploitability, nash, tv_distance
from anypo.oracles.verifier_bt import VerifierBT, bt_prob

__all__ = [
    "MajorityOracle",
    "OracleConfig",
    "PreferenceOracle",
    "VerifierBT",
    "arithmetic_criteria",
    "bt_prob",
    "exploitability",
    "hard_label",
    "majority_prob",
    "make_oracle",
    "nash",
    "preference_matrices",
    "preference_matrix",
    "tv_distance",
]


@dataclass(frozen=True)
class OracleConfig:
    """Which preference oracle judges the policy's samples."""

    kind: Literal["verifier_bt", "intransitive"] = "verifier_bt"
    """verifier_bt: Bradley-Terry on the task's reward; intransitive: majority of three graded criteria."""
    temperature: float = 0.0
    """verifier_bt: the Bradley-Terry temperature T (0: hard labels)."""
    length_budget: int = 40
    """intransitive: characters within which every response ties on the length criterion."""


def oracle_config_problems(cfg: OracleConfig, prefix: str = "oracle") -> list[str]:
    """Every problem of ``cfg`` (one message each naming the option and the fix)."""
    import math

    out = []
    if cfg.kind not in ("verifier_bt", "intransitive"):
        out.append(f"--{prefix}.kind is {cfg.kind!r}: use verifier_bt or intransitive")
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
    raise ValueError(f"oracle.kind is {cfg.kind!r}: use verifier_bt or intransitive")
