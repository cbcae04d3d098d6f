"""SPO: each sample's self-play win rate within its group is its reward (the online RL loop's SPO port).

Paper: G. Swamy, C. Dann, R. Kidambi, Z. S. Wu, A. Agarwal, "A Minimaximalist Approach to
Reinforcement Learning from Human Feedback", https://arxiv.org/abs/2401.04056 (ICML 2024). The
abstract's mechanism (spec ``preference-selfplay-agentic.md`` section 3): sample several
trajectories from the current policy, let a preference function compare them, and use each
trajectory's proportion of wins as its reward in any RL algorithm; the symmetry of the zero-sum
preference game lets one policy play against itself, and the fixed point is the Minimax Winner
(the Nash equilibrium of the game, which exists for intransitive preferences where no reward does).

RECONSTRUCTED: the paper's experiments are continuous control and no code was found; the comparison
pool (the current group only, no queue of past trajectories), the win-rate convention and the RL
algorithm of the LLM port are ours. Here the group of ``K`` samples of one prompt is the pool:

    r_i = (1 / (K - 1)) sum_{j != i} P(y_i > y_j)          (convention="exclude_self", the spec's library form)
    r_i = (1 / K) (1/2 + sum_{j != i} P(y_i > y_j))         (convention="include_self", SPPO's count)
    A_i = r_i - mean_group(r)                                (= r_i - 1/2 when every pair is judged)

broadcast over the response tokens. The preference function ``P`` (``preference``):

* ``reward_bt``: Bradley-Terry on the samples' rewards, ``sigmoid((R_i - R_j) / T)``; ``T = 0`` gives
  hard comparisons (1, 0, or 1/2 on a tie) -- ``anypo.oracles.bt_prob``.
* ``intransitive``: the majority of three graded criteria (``anypo.oracles.intransitive``): correct
  2 / wrong number 1 / no number 0 (from ``extras["correct"]`` and the text), characters beyond
  ``length_budget``, answer format 0-3. Needs ``extras["text"]`` and ``extras["correct"]`` (the
  built-in tasks' rollouts carry both).

A sample whose reward failed (``extras["reward_error"]``) is not judged: it is left out of its
group's comparisons and gets advantage 0. Shapes: ``rewards [N]``, ``group_ids [N]``,
``response_mask [N, T]`` -> ``[N, T]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anypo.advantages.outcome import ADVANTAGES, GroupRelativeConfig, broadcast, sequence_rewards
from anypo.types import RolloutBatch

__all__ = ["SPOAdvantage", "spo", "win_rates"]


@dataclass(frozen=True)
class SPOAdvantage(GroupRelativeConfig):
    """SPO's self-play win-rate reward, centred on its group mean (see the module docstring).

    Paper: "A Minimaximalist Approach to Reinforcement Learning from Human Feedback",
    https://arxiv.org/abs/2401.04056 (abstract: the proportion of wins as the reward). RECONSTRUCTED
    LLM port: pool = the prompt's group, ``convention`` as the spec's library form.
    """

    preference: Literal["reward_bt", "intransitive"] = "reward_bt"
    """reward_bt: Bradley-Terry on the rewards; intransitive: majority of three graded verifiable criteria."""
    temperature: float = 0.0
    """reward_bt: the Bradley-Terry temperature T (0: hard comparisons)."""
    length_budget: int = 40
    """intransitive: characters within which every response ties on the length criterion."""
    convention: Literal["exclude_self", "include_self"] = "exclude_self"
    """exclude_self: mean over the other K-1 samples; include_self: SPPO's 1/K sum with P_ii = 1/2."""

    def __post_init__(self) -> None:
        if self.preference not in ("reward_bt", "intransitive"):
            raise ValueError(f"SPOAdvantage.preference must be 'reward_bt' or 'intransitive', got {self.preference!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"SPOAdvantage.temperature must be >= 0 (0 for hard comparisons), got {self.temperature}")
        if self.length_budget < 1:
            raise ValueError(f"SPOAdvantage.length_budget must be >= 1, got {self.length_budget}")
        if self.convention not in ("exclude_self", "include_self"):
            raise ValueError(
                f"SPOAdvantage.convention must be 'exclude_self' or 'include_self', got {self.convention!r}"
            )


def win_rates(P: Tensor, convention: str = "exclude_self") -> Tensor:
    """``[K]`` win rates from a ``[K, K]`` preference matrix (diagonal ignored; NaN-free)."""
    K = P.shape[0]
    off = P.sum(1) - P.diagonal()
    if convention == "exclude_self":
        return off / max(K - 1, 1)
    return (off + 0.5) / K


def _grades(text: str, correct: float, budget: int) -> tuple[float, float, float]:
    from anypo.oracles.intransitive import answer_format
    from anypo.rewards import extract_answer, parse_number

    pred = extract_answer(text)
    has_number = pred is not None and parse_number(pred) is not None
    c = 2.0 if correct >= 1.0 else 1.0 if has_number else 0.0
    return (c, -float(max(0, len(text) - budget)), answer_format(None, text))


@ADVANTAGES.register("spo", config=SPOAdvantage)
def spo(batch: RolloutBatch, cfg: SPOAdvantage) -> Tensor:
    """SPO: ``A_i = r_i - mean_g r`` with ``r_i`` the sample's win rate in its group; broadcast.

    Args:
        batch: ``rewards [N]``, ``group_ids [N]``, ``response_mask [N, T]``; ``extras["text"]`` and
            ``extras["correct"]`` for ``preference="intransitive"``; optional ``extras["reward_error"]``.
        cfg: the preference function and the win-rate convention.

    Returns:
        [N, T] advantages in the dtype of ``rewards``; 0 for unjudged samples and groups of one.
    """
    from anypo.oracles import bt_prob, majority_prob

    R = sequence_rewards(batch)
    N = R.shape[0]
    errors = batch.extras.get("reward_error") or [False] * N
    if cfg.preference == "intransitive":
        texts, correct = batch.extras.get("text"), batch.extras.get("correct")
        if texts is None or correct is None:
            raise ValueError(
                "SPOAdvantage(preference='intransitive') needs extras['text'] and extras['correct'] (the task's "
                "correctness per sample: a built-in task's rollout provides both); use preference='reward_bt' otherwise"
            )
        grades = [_grades(texts[i], float(correct[i]), cfg.length_budget) for i in range(N)]
    A = torch.zeros(N, dtype=torch.float64)
    spreads = []
    for g in torch.unique(batch.group_ids).tolist():
        idx = [i for i in (batch.group_ids == g).nonzero().flatten().tolist() if not errors[i]]
        K = len(idx)
        if K < 2:
            continue
        P = torch.full((K, K), 0.5, dtype=torch.float64)
        for a in range(K):
            for b in range(a + 1, K):
                i, j = idx[a], idx[b]
                if cfg.preference == "reward_bt":
                    p = bt_prob(float(R[i]), float(R[j]), cfg.temperature)
                else:
                    p = majority_prob(grades[i], grades[j])
                P[a, b], P[b, a] = p, 1.0 - p
        r = win_rates(P, cfg.convention)
        A[idx] = r - r.mean()
        spreads.append(float(r.max() - r.min()))
    batch.add_metric("win_rate_spread", sum(spreads) / len(spreads) if spreads else 0.0)
    return broadcast(A.to(R.dtype), batch)
