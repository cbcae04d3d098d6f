"""The exact Nash equilibrium of a finite symmetric preference game, and the exploitability of a policy.

Given ``K`` candidate responses to one prompt and their preference matrix ``P [K, K]``
(``P[i, j] = P(y_i > y_j)``, ``P[i, j] + P[j, i] = 1``, ``P[i, i] = 1/2``), the preference game is
the two-player symmetric constant-sum game in which each player picks a mixed strategy ``p`` over the
candidates and the row player earns ``p^T P q``. Its payoff ``A = P - 1/2`` is antisymmetric, so the
value is 0 and a Nash (von Neumann / minimax-winner) strategy ``q`` satisfies ``(A q)_i <= 0`` for
every ``i``: no candidate beats ``q`` more often than it loses to it (SPPO arXiv 2405.00675 and SPO
arXiv 2401.04056 define the Nash / minimax winner this way).

:func:`nash` solves the linear program exactly with rational arithmetic (``fractions.Fraction``;
floats are converted exactly, so the answer is the exact Nash of the given float matrix), by the
simplex method with Bland's rule (no cycling). scipy is not a dependency of anypo, so this small
solver stands in for ``scipy.optimize.linprog``. Formulation (the column player's LP of the shifted
game ``B = A + 1 > 0``):

    maximise sum_j y_j   subject to   B y <= 1,  y >= 0.

The optimum has ``sum y = 1 / v_B`` and ``q = y / sum y`` is a minimax strategy of the column player;
for an antisymmetric ``A`` the column player's optimal strategies are also the row player's, so ``q``
is a symmetric Nash equilibrium. The origin is feasible (slack basis), so no phase 1 is needed.

:func:`exploitability` is ``max_i P(y_i > q) - 1/2 = max_i (P q)_i - 1/2``: how much a best response
among the candidates beats ``q`` (0 exactly at a Nash equilibrium, at most 1/2); the duality gap of
the symmetric game is twice it.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

__all__ = ["exploitability", "nash", "tv_distance"]


def _check(P: Sequence[Sequence[float]]) -> int:
    K = len(P)
    if K == 0 or any(len(row) != K for row in P):
        raise ValueError(
            f"the preference matrix must be square and non-empty, got {K} rows of lengths {[len(r) for r in P]}"
        )
    for i in range(K):
        for j in range(K):
            v = P[i][j]
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"P[{i}][{j}] = {v} is not a probability in [0, 1]")
            if abs(float(v) + float(P[j][i]) - 1.0) > 1e-9:
                raise ValueError(
                    f"P[{i}][{j}] + P[{j}][{i}] = {float(v) + float(P[j][i])}: a preference matrix has P_ij + P_ji = 1"
                )
    return K


def nash(P: Sequence[Sequence[float | Fraction]]) -> list[Fraction]:
    """An exact symmetric Nash equilibrium ``q`` (a probability vector of ``K`` Fractions) of the
    preference game with matrix ``P [K, K]`` (see the module docstring for the LP).

    Raises ValueError when ``P`` is not a square matrix of probabilities with ``P_ij + P_ji = 1``.
    """
    K = _check(P)
    one = Fraction(1)
    # B = P - 1/2 + 1 = P + 1/2 > 0 entrywise (entries in [1/2, 3/2]).
    B = [[Fraction(P[i][j]) + Fraction(1, 2) for j in range(K)] for i in range(K)]
    # Tableau rows: K constraints over variables y_0..y_{K-1}, slacks s_0..s_{K-1}; last column the rhs.
    n_var = 2 * K
    rows = [B[i] + [one if k == i else Fraction(0) for k in range(K)] + [one] for i in range(K)]
    basis = [K + i for i in range(K)]  # the slacks
    # Objective row: reduced costs of "maximise sum y" written as z - sum y = 0.
    obj = [-one] * K + [Fraction(0)] * K + [Fraction(0)]
    while True:
        # Bland's rule: the lowest-index variable with a negative reduced cost enters.
        enter = next((j for j in range(n_var) if obj[j] < 0), None)
        if enter is None:
            break
        ratios = [(rows[r][-1] / rows[r][enter], basis[r], r) for r in range(K) if rows[r][enter] > 0]
        if not ratios:  # unbounded: impossible here (B > 0 bounds every y), kept as a guard
            raise RuntimeError("the Nash LP is unbounded; the preference matrix is malformed")
        _, _, leave = min(ratios)  # smallest ratio, ties broken by the lowest basic index (Bland)
        piv = rows[leave][enter]
        rows[leave] = [v / piv for v in rows[leave]]
        for r in range(K):
            if r != leave and rows[r][enter] != 0:
                f = rows[r][enter]
                rows[r] = [a - f * b for a, b in zip(rows[r], rows[leave], strict=True)]
        f = obj[enter]
        obj = [a - f * b for a, b in zip(obj, rows[leave], strict=True)]
        basis[leave] = enter
    y = [Fraction(0)] * K
    for r, var in enumerate(basis):
        if var < K:
            y[var] = rows[r][-1]
    total = sum(y)
    return [v / total for v in y]


def exploitability(P: Sequence[Sequence[float]], q: Sequence[float]) -> float:
    """``max_i sum_j P[i][j] q[j] - 1/2``: the best candidate's win rate against the mixed strategy
    ``q`` minus one half (0 at a Nash equilibrium, up to 1/2). ``q`` must be a probability vector."""
    K = _check(P)
    if len(q) != K:
        raise ValueError(f"q has {len(q)} entries for a {K} x {K} preference matrix")
    if any(float(v) < -1e-12 for v in q) or abs(sum(float(v) for v in q) - 1.0) > 1e-6:
        raise ValueError(f"q must be a probability vector (non-negative, summing to 1), got {list(q)}")
    return max(sum(float(P[i][j]) * float(q[j]) for j in range(K)) for i in range(K)) - 0.5


def tv_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Total-variation distance ``(1/2) sum_i |p_i - q_i|`` of two distributions on the same candidates."""
    if len(p) != len(q):
        raise ValueError(f"distributions of different sizes: {len(p)} and {len(q)}")
    return 0.5 * sum(abs(float(a) - float(b)) for a, b in zip(p, q, strict=True))
