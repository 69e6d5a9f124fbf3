"""Does an arm beat the control? Difference of means, a bootstrap interval and a permutation test.

Each arm's trainings (one per seed for a search or a fixed genotype) are compared with the control
arm's trainings (the random genotypes: one per drawn genotype, or several seeds each) on one
figure (test top-1 by default, the figure a reader compares; nothing is selected on it):

- **difference** of the means, arm − control, in points;
- **95 % interval**: percentile bootstrap, resampling the arm's and the control's values
  independently with replacement, fixed seed. A control whose genotypes were trained under several
  seeds is resampled in two stages (genotypes, then seeds within each drawn genotype): its seeds are
  not independent draws of "a random genotype", and treating them so would narrow the interval;
- **p-value**: two-sided permutation test of the difference of means, exact (every split of the
  pooled values) when there are at most `exact_limit` splits, else Monte Carlo with `permutations`
  draws (p = (hits + 1) / (draws + 1), never 0). A control with several seeds per genotype enters
  as its genotype means (the unit a search is compared with is a genotype).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np


def bootstrap_difference(a: Sequence[float], b: Sequence[float], n: int = 10_000, seed: int = 0,
                         level: float = 0.95, b_groups: Sequence[Sequence[float]] | None = None
                         ) -> tuple[float, float]:
    """Percentile interval of mean(a) − mean(b), a and b resampled independently; nan when a side has
    fewer than 2 values (one value shows none of its own spread: the interval would be too narrow).
    With `b_groups` (b's values grouped by genotype) b is resampled in two stages instead."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if n <= 0 or len(x) < 2 or len(y) < 2 or (b_groups is not None and len(b_groups) < 2):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    dx = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    dy = (cluster_bootstrap_means(b_groups, n, rng) if b_groups is not None
          else y[rng.integers(0, len(y), (n, len(y)))].mean(1))
    lo, hi = np.percentile(dx - dy, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def cluster_bootstrap_means(groups: Sequence[Sequence[float]], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` bootstrap means of a two-stage resample: draw len(groups) groups with replacement, then
    each drawn group's members with replacement; the mean is over the drawn groups' means."""
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    sizes = {len(g) for g in arrays}
    if len(sizes) == 1:
        table, k = np.stack(arrays), sizes.pop()
        pick = rng.integers(0, len(arrays), (n, len(arrays)))
        members = rng.integers(0, k, (n, len(arrays), k))
        return table[pick[..., None], members].mean(axis=(1, 2))
    out = np.empty(n)
    for j in range(n):
        drawn = rng.integers(0, len(arrays), len(arrays))
        out[j] = np.mean([arrays[g][rng.integers(0, len(arrays[g]), len(arrays[g]))].mean() for g in drawn])
    return out


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
                       permutations: int = 20_000, control_groups: Sequence[Sequence[float]] | None = None
                       ) -> list[dict[str, Any]]:
    """One row per arm (not the control) with values: n, mean, difference, interval, p.
    `control_groups`: the control's values grouped by genotype; when some genotype has several seeds
    the control is resampled in two stages and permuted as genotype means (see the module text)."""
    base = values.get(control) or []
    clustered = control_groups is not None and any(len(g) > 1 for g in control_groups)
    units = [float(np.mean(g)) for g in control_groups] if clustered else base  # type: ignore[union-attr]
    rows = []
    for arm, xs in values.items():
        if arm == control or not xs or not base:
            continue
        lo, hi = bootstrap_difference(xs, base, bootstrap, b_groups=control_groups if clustered else None)
        p, method = permutation_p(xs, units, permutations)
        rows.append({"arm": arm, "control": control, "n": len(xs), "n_control": len(base),
                     "control_genotypes": len(units), "control_unit": "genotype mean" if clustered else "training",
                     "mean": float(np.mean(xs)), "control_mean": float(np.mean(units)),
                     "difference": float(np.mean(xs) - np.mean(units)), "difference_ci": [lo, hi],
                     "p_value": p, "p_method": method, "verdict": verdict(p, [lo, hi])})
    return rows
