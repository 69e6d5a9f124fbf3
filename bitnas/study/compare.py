"""Does an arm beat the control? Difference of means, a bootstrap interval and a permutation test.

Each arm's trainings (one per seed for a search or a fixed genotype) are compared with the control
arm's trainings (the random genotypes: one per drawn genotype, or several seeds each) on one
figure (test top-1 by default, the figure a reader compares; nothing is selected on it):

- **difference** of the means, arm − control, in points;
- **95 % interval**: percentile bootstrap, resampling the arm's and the control's values
  independently with replacement (over seeds, and over genotypes and their seeds), fixed seed;
- **p-value**: two-sided permutation test of the difference of means, exact (every split of the
  pooled values) when there are at most `exact_limit` splits, else Monte Carlo with `permutations`
  draws (p = (hits + 1) / (draws + 1), never 0).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np


def bootstrap_difference(a: Sequence[float], b: Sequence[float], n: int = 10_000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(a) − mean(b), a and b resampled independently; nan when a side has
    fewer than 2 values (one value shows none of its own spread: the interval would be too narrow)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if n <= 0 or len(x) < 2 or len(y) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    dx = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    dy = y[rng.integers(0, len(y), (n, len(y)))].mean(1)
    lo, hi = np.percentile(dx - dy, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def permutation_p(a: Sequence[float], b: Sequence[float], permutations: int = 20_000, seed: int = 0,
                  exact_limit: int = 200_000) -> tuple[float, str]:
    """Two-sided p-value of |mean(a) − mean(b)| under random relabelling; ('exact' | 'monte carlo')."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        return float("nan"), "none"
    pooled = np.concatenate([x, y])
    total, k = len(pooled), len(x)
    observed = abs(x.mean() - y.mean())
    tol = 1e-9 * max(1.0, observed)
    if math.comb(total, k) <= exact_limit:
        s = pooled.sum()
        hits = count = 0
        for idx in itertools.combinations(range(total), k):
            sa = pooled[list(idx)].sum()
            diff = abs(sa / k - (s - sa) / (total - k))
            hits += diff >= observed - tol
            count += 1
        return hits / count, "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        p = rng.permutation(pooled)
        hits += abs(p[:k].mean() - p[k:].mean()) >= observed - tol
    return (hits + 1) / (permutations + 1), "monte carlo"


def verdict(p_value: float, interval: Sequence[float], alpha: float = 0.05) -> str:
    """'better' / 'worse' when the permutation test rejects at `alpha` and the bootstrap interval lies
    on one side of 0; 'not shown' otherwise (including an arm with one value: no interval)."""
    lo, hi = interval
    if np.isnan(p_value) or np.isnan(lo) or p_value >= alpha:
        return "not shown"
    return "better" if lo > 0 else "worse" if hi < 0 else "not shown"


def compare_to_control(values: dict[str, list[float]], control: str, bootstrap: int = 10_000,
                       permutations: int = 20_000) -> list[dict[str, Any]]:
    """One row per arm (not the control) with values: n, mean, difference, interval, p."""
    base = values.get(control) or []
    rows = []
    for arm, xs in values.items():
        if arm == control or not xs or not base:
            continue
        lo, hi = bootstrap_difference(xs, base, bootstrap)
        p, method = permutation_p(xs, base, permutations)
        rows.append({"arm": arm, "control": control, "n": len(xs), "n_control": len(base),
                     "mean": float(np.mean(xs)), "control_mean": float(np.mean(base)),
                     "difference": float(np.mean(xs) - np.mean(base)), "difference_ci": [lo, hi],
                     "p_value": p, "p_method": method, "verdict": verdict(p, [lo, hi])})
    return rows
