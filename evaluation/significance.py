"""Is a difference real? Paired tests over users, because two models scored on the same users are paired.

Per-user metrics are heavy-tailed (mostly 0 with a few 1s under leave-one-out), so the primary interval
is a paired bootstrap percentile interval (Efron & Tibshirani; Sakai 2006 for IR); the paired t-test is
reported beside it. With many comparisons in one report, Holm's step-down adjustment controls the
family-wise error.
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


def _boot_means(values: np.ndarray, n_boot: int, seed: int, chunk: int = 256) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the rows of ``values`` ((n,) or (n, m))."""
    rng = np.random.default_rng(seed)
    n = len(values)
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        out.append(values[idx].mean(axis=1))
    return np.concatenate(out)


def bootstrap_ci(values: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> MeanCI:
    """Mean and percentile bootstrap interval over users (NaN users, i.e. undefined metrics, dropped)."""
    v = _clean(values)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, level)
    means = _boot_means(v, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    return MeanCI(float(v.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), len(v), level)


def paired_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of the paired t-test on a - b. p from Student's t (scipy) with n - 1 df."""
    from scipy import stats

    d = _clean(a) - _clean(b)
    d = d[~np.isnan(d)]
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return (0.0, 1.0) if d.mean() == 0 else (math.copysign(math.inf, d.mean()), 0.0)
    t = d.mean() / (sd / math.sqrt(n))
    return float(t), float(2 * stats.t.sf(abs(t), n - 1))


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float, float]:
    """(diff, low, high, p): mean(a - b) over users, its percentile interval from resampling USERS (both
    models' values move together), and the two-sided bootstrap p-value (twice the smaller tail mass of
    the shifted-to-zero bootstrap distribution, floored at 1 / n_boot)."""
    d = _clean(a) - _clean(b)
    if len(_clean(a)) != len(_clean(b)):
        raise ValueError("paired comparison needs the same users in the same order")
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return math.nan, math.nan, math.nan, math.nan
    means = _boot_means(d, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    diff = float(d.mean())
    centred = means - diff  # the null distribution of the mean difference
    p = float(np.mean(np.abs(centred) >= abs(diff)))
    return diff, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), max(p, 1.0 / n_boot)


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
