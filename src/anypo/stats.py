"""Statistics across seeds for ``anypo report``: Student-t intervals and Welch's t-test, without scipy.

Seeds are the unit of replication: each run contributes one number (its final pass@1, its final
reward, ...), and a method's n is its number of seeds. The Student-t distribution is computed from the
regularized incomplete beta function (Numerical Recipes, 3rd ed., section 6.4), so the report needs
only the standard library; its quantiles are checked against published table values in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) = B(x; a, b) / B(a, b), for a, b > 0 and 0 <= x <= 1.

    Evaluated by Lentz's continued fraction, which converges fast for x < (a + 1) / (a + b + 2); the
    symmetry I_x(a, b) = 1 - I_{1-x}(b, a) covers the rest.
    """
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def _beta_cf(a: float, b: float, x: float, tiny: float = 1e-300, eps: float = 1e-15) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"betainc continued fraction did not converge (a={a}, b={b}, x={x})")


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom.

    P(|T| > |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2).
    """
    if df <= 0:
        raise ValueError(f"t_cdf: degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (e.g. t_ppf(0.975, 10) = 2.228).

    Bisection on ``t_cdf``: monotone and exact to ~1e-12 relative, which is all a report needs.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf: p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Summary:
    """Mean of one number across seeds, with its two-sided t-interval (None when n < 2)."""

    n: int
    mean: float
    sd: float  # sample standard deviation (n - 1 in the denominator); nan when n < 2
    lo: float | None
    hi: float | None


def mean_ci(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean and ``level`` t-interval: mean +- t_{(1+level)/2, n-1} * sd / sqrt(n). Non-finite values are dropped."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, None, None)
    mean = sum(xs) / n
    if n < 2:
        return Summary(n, mean, math.nan, None, None)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Welch:
    """Difference of means b - a with Welch's interval and two-sided test; None where there is none (a side
    with n < 2, or no spread on either side)."""

    n_a: int
    n_b: int
    diff: float
    lo: float | None
    hi: float | None
    p: float | None
    df: float | None
    note: str  # "" or why there is no interval / test ("n too small", "zero variance")

    @property
    def distinguishable(self) -> bool | None:
        """False where the interval contains 0, True where it does not, None without an interval."""
        if self.lo is None or self.hi is None or self.note:
            return None
        return not (self.lo <= 0.0 <= self.hi)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Welch:
    """Welch's unequal-variance comparison of the means of ``b`` and ``a`` (seeds as replicates).

    se^2 = s_a^2 / n_a + s_b^2 / n_b;  df = se^4 / ((s_a^2/n_a)^2 / (n_a-1) + (s_b^2/n_b)^2 / (n_b-1))
    (Welch-Satterthwaite); interval diff +- t_{(1+level)/2, df} * se; p = 2 * P(T_df > |diff| / se).
    """
    sa, sb = mean_ci(a, level), mean_ci(b, level)
    diff = sb.mean - sa.mean
    if sa.n < 2 or sb.n < 2:
        return Welch(sa.n, sb.n, diff, None, None, None, None, "n too small")
    va, vb = sa.sd**2 / sa.n, sb.sd**2 / sb.n
    se2 = va + vb
    if se2 == 0.0:
        return Welch(sa.n, sb.n, diff, None, None, None, None, "zero variance")
    df = se2**2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    se = math.sqrt(se2)
    half = t_ppf(0.5 + level / 2.0, df) * se
    t = abs(diff) / se
    p = betainc(df / 2.0, 0.5, df / (df + t * t))  # = 2 * P(T_df > t), without the cancellation of 1 - cdf
    return Welch(sa.n, sb.n, diff, diff - half, diff + half, min(max(p, 0.0), 1.0), df, "")


def trailing_mean(xs: Sequence[float], n: int) -> list[float]:
    """Moving mean of each value and the ``n - 1`` before it (fewer at the start): the smoothing of the
    curves in docs figures (one step of a few samples is noisy)."""
    return [sum(xs[max(0, j - n + 1) : j + 1]) / len(xs[max(0, j - n + 1) : j + 1]) for j in range(len(xs))]
