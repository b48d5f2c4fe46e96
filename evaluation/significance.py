"""Is a difference real? Paired tests over users, because two models scored on the same users are paired.

Per-user metrics are heavy-tailed (mostly 0 with a few 1s under leave-one-out), so the primary interval
is a paired bootstrap percentile interval (Efron & Tibshirani; Sakai 2006 for IR); the paired t-test is
reported beside it. With many comparisons in one report, Holm's step-down adjustment controls the
family-wise error. Intervals and tests come from ``scipy.stats`` (``bootstrap``, ``ttest_rel``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MeanCI", "Comparison", "bootstrap_ci", "paired_bootstrap", "paired_t_test", "compare", "holm"]


@dataclass(frozen=True)
class MeanCI:
    """Mean of per-user values with a bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n: int
    level: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class Comparison:
    """A vs B on the same users: diff = mean(a) - mean(b) with a paired-bootstrap interval, the bootstrap
    two-sided p-value, the paired t-test's t and p, and the relative difference diff / mean(b)."""

    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    p_bootstrap: float
    t: float
    p_t: float
    rel_diff: float
    n: int
    level: float
    p_holm: float | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return asdict(self)


def _clean(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError("expected a 1-d array of per-user values")
    return v


def _bootstrap_means(values: np.ndarray, level: float, n_boot: int, seed: int) -> tuple[float, float, np.ndarray]:
    """(low, high, bootstrap means) of a percentile bootstrap over the rows of ``values`` (users).

    ``scipy.stats.bootstrap`` with a seeded generator, resampling in batches of 256 so the (batch, n) index
    matrix stays small on large test sets. A single value has nothing to resample: every mean is that value.
    """
    from scipy import stats

    if len(values) == 1:  # scipy needs two observations
        return float(values[0]), float(values[0]), np.full(n_boot, values[0])
    # random_state=, not rng= (scipy >= 1.15 only): pyproject allows scipy >= 1.11. Same draws either way.
    res = stats.bootstrap((values,), np.mean, confidence_level=level, n_resamples=n_boot, method="percentile",
                          batch=256, random_state=np.random.default_rng(seed))
    ci = res.confidence_interval
    return float(ci.low), float(ci.high), res.bootstrap_distribution


def bootstrap_ci(values: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> MeanCI:
    """Mean and percentile bootstrap interval over users (NaN users, i.e. undefined metrics, dropped)."""
    v = _clean(values)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, level)
    low, high, _ = _bootstrap_means(v, level, n_boot, seed)
    return MeanCI(float(v.mean()), low, high, len(v), level)


def paired_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of the paired t-test on a - b (``scipy.stats.ttest_rel``; pairs with a NaN dropped).

    Differences that are all equal (up to rounding: scipy's own precision-loss test) have no variance and
    no meaningful t from scipy: all zero -> (0, 1), the models agree on every user; a constant non-zero
    difference -> (+-inf, 0).
    """
    from scipy import stats

    a, b = _clean(a), _clean(b)
    keep = ~np.isnan(a - b)
    a, b = a[keep], b[keep]
    d = a - b
    if len(d) < 2:
        return math.nan, math.nan
    mean = float(d.mean())
    if np.max(np.abs(d - mean)) <= 10 * np.finfo(np.float64).eps * abs(mean):
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    res = stats.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float, float]:
    """(diff, low, high, p): mean(a - b) over users, its percentile interval from resampling USERS (both
    models' values move together), and the two-sided bootstrap p-value: the share of bootstrap means at
    least |diff| away from diff (the bootstrap distribution shifted to 0 stands for "no difference"),
    floored at 1 / n_boot because n_boot resamples cannot show a smaller p."""
    a, b = _clean(a), _clean(b)
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same users in the same order")
    d = a - b
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return math.nan, math.nan, math.nan, math.nan
    diff = float(d.mean())
    low, high, means = _bootstrap_means(d, level, n_boot, seed)
    centred = means - diff  # the null distribution of the mean difference
    p = float(np.mean(np.abs(centred) >= abs(diff)))
    return diff, low, high, max(p, 1.0 / n_boot)


def compare(
    a: np.ndarray,
    b: np.ndarray,
    *,
    metric: str = "",
    name_a: str = "a",
    name_b: str = "b",
    users_a: np.ndarray | None = None,
    users_b: np.ndarray | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Paired comparison of per-user values ``a`` and ``b``. Give ``users_a``/``users_b`` to have the
    pairing checked (two results from different splits must not be compared)."""
    if users_a is not None and users_b is not None and not np.array_equal(users_a, users_b):
        raise ValueError(f"{name_a} and {name_b} were scored on different users: not a paired comparison")
    a, b = _clean(a), _clean(b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} values: not a paired comparison")
    diff, low, high, p = paired_bootstrap(a, b, level=level, n_boot=n_boot, seed=seed)
    t, p_t = paired_t_test(a, b)
    mean_a, mean_b = float(np.nanmean(a)), float(np.nanmean(b))
    return Comparison(
        metric=metric, a=name_a, b=name_b, mean_a=mean_a, mean_b=mean_b, diff=diff, low=low, high=high,
        p_bootstrap=p, t=t, p_t=p_t, rel_diff=diff / mean_b if mean_b else math.nan,
        n=int((~np.isnan(a - b)).sum()), level=level,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
