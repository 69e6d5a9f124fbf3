"""Rank fidelity (METHODS §7): does a search's own estimate rank architectures as training them does?

Ground truth: the validation top-1 of M genotypes trained stand-alone under the study protocol
(the validation split is carved from the training images; the test split plays no part, so the
fidelity figures can be used to choose search settings). Estimators: each search's own score of
a genotype in its trained state (`SearchStrategy.estimate`): the CP-NAS indicator z of the path
(and its parts A_C, A_P), the α-based score of DARTS / PC-DARTS / UBNAS, the weight-sharing
accuracy of random search; and zero-cost estimators of the untrained network
(`bitnas.study.estimators`, the study's zero_cost trials). Reported: Kendall τ-b and Spearman ρ
with percentile bootstrap 95 % intervals (genotypes resampled with replacement).

The scores come from the study's scoring trials: `bitnas.study.estimators.search` (a search's own
estimator) and `bitnas.study.estimators.protocol` (zero-cost estimators).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


# ---------------------------------------------------------------------------- statistics

def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b (tie-corrected); nan when either side is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = np.sign(a[:, None] - a[None, :])
    dy = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    s = float((dx * dy)[iu].sum())
    nx, ny = float((dx[iu] != 0).sum()), float((dy[iu] != 0).sum())
    return s / np.sqrt(nx * ny) if nx and ny else float("nan")


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of average ranks; nan when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / den if den else float("nan")


def bootstrap_ci(x: Sequence[float], y: Sequence[float], stat: Callable[[Any, Any], float], n: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(x, y)` over resampled pairs (nan-resamples dropped)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if n <= 0 or len(a) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        v = stat(a[idx], b[idx])
        if not np.isnan(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def correlation(x: Sequence[float], y: Sequence[float], bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """τ and ρ with their bootstrap intervals, and M."""
    tau_lo, tau_hi = bootstrap_ci(x, y, kendall_tau, bootstrap, seed)
    rho_lo, rho_hi = bootstrap_ci(x, y, spearman_rho, bootstrap, seed + 1)
    return {"m": len(x), "kendall_tau": kendall_tau(x, y), "kendall_tau_ci": [tau_lo, tau_hi],
            "spearman_rho": spearman_rho(x, y), "spearman_rho_ci": [rho_lo, rho_hi]}


def ground_truth(records: list[dict[str, Any]], arm: str) -> dict[int, float]:
    """Genotype index → stand-alone validation top-1 of `arm`'s trainings (the mean over seeds where
    an arm with `seeds:` trained a genotype several times)."""
    per_index: dict[int, list[float]] = {}
    for r in records:
        if r["arm"] == arm and r["kind"] == "train" and r.get("val_top1") is not None:
            per_index.setdefault(int(r["index"]), []).append(float(r["val_top1"]))
    return {i: float(np.mean(v)) for i, v in per_index.items()}


def fidelity_table(scores: dict[str, list[dict[str, Any]]], truth: dict[int, float],
                   bootstrap: int = 1000) -> list[dict[str, Any]]:
    """One row per estimator (and per score part, e.g. CP-NAS' acc_child): the correlation of each
    seed's scores with `truth` (genotype index → stand-alone validation top-1), and of the scores
    averaged over seeds. `scores`: estimator → score records of its seeds."""
    rows = []
    for est, recs in scores.items():
        parts = sorted({k for r in recs for s in r["scores"] for k in s if k not in ("index",)})
        for part in ["score"] + [p for p in parts if p != "score"]:
            per_seed = []
            means: dict[int, list[float]] = {}
            for r in recs:
                pairs = [(s[part], truth[s["index"]]) for s in r["scores"] if s["index"] in truth and part in s]
                if len(pairs) >= 3:
                    c = correlation([p[0] for p in pairs], [p[1] for p in pairs], bootstrap, seed=r["seed"])
                    per_seed.append({"seed": r["seed"], **c})
                for s in r["scores"]:
                    if s["index"] in truth and part in s:
                        means.setdefault(s["index"], []).append(s[part])
            idx = sorted(means)
            if len(idx) < 3:
                continue
            pooled = correlation([float(np.mean(means[i])) for i in idx], [truth[i] for i in idx], bootstrap)
            rows.append({"estimator": est, "part": part, "seeds": [p["seed"] for p in per_seed],
                         "per_seed": per_seed, "mean_over_seeds": pooled})
    return rows
