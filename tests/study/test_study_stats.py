"""Kendall τ-b, Spearman ρ and the bootstrap against independent computations."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bitnas.study.fidelity import bootstrap_ci, correlation, fidelity_table, kendall_tau, spearman_rho


def tau_b_bruteforce(x, y):
    """τ-b from its definition: (concordant − discordant) / sqrt((n0 − n1)(n0 − n2))."""
    c = d = tx = ty = 0
    n = len(x)
    for i, j in itertools.combinations(range(n), 2):
        a, b = x[i] - x[j], y[i] - y[j]
        if a == 0 and b == 0:
            tx += 1
            ty += 1
        elif a == 0:
            tx += 1
        elif b == 0:
            ty += 1
        elif a * b > 0:
            c += 1
        else:
            d += 1
    n0 = n * (n - 1) / 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def spearman_bruteforce(x, y):
    def ranks(v):
        return [sum(w < u for w in v) + (sum(w == u for w in v) + 1) / 2 for u in v]
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return num / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_closed_forms() -> None:
    x = [1, 2, 3, 4, 5]
    assert kendall_tau(x, x) == 1.0 and kendall_tau(x, x[::-1]) == -1.0
    assert spearman_rho(x, [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    # one swapped adjacent pair of 5: 9 concordant, 1 discordant → τ = 0.8; ρ = 1 − 6·2/(5·24) = 0.9
    y = [1, 2, 4, 3, 5]
    assert kendall_tau(x, y) == pytest.approx(0.8)
    assert spearman_rho(x, y) == pytest.approx(0.9)
    assert math.isnan(kendall_tau(x, [3, 3, 3, 3, 3])) and math.isnan(spearman_rho(x, [1, 1, 1, 1, 1]))


@pytest.mark.parametrize("seed", range(6))
def test_random_with_ties_match_bruteforce(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, 14).tolist()
    y = (np.array(x) * rng.choice([-1, 1]) + rng.integers(0, 4, 14)).tolist()
    assert kendall_tau(x, y) == pytest.approx(tau_b_bruteforce(x, y))
    assert spearman_rho(x, y) == pytest.approx(spearman_bruteforce(x, y))


def test_bootstrap_interval_brackets_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + rng.normal(scale=0.5, size=30)
    lo, hi = bootstrap_ci(x, y, kendall_tau, 400, seed=3)
    assert lo < kendall_tau(x, y) < hi and (lo, hi) == bootstrap_ci(x, y, kendall_tau, 400, seed=3)
    assert 0.0 < lo and hi < 1.0
    c = correlation(x, y, bootstrap=0)
    assert c["m"] == 30 and math.isnan(c["kendall_tau_ci"][0])


def test_fidelity_table_pools_seeds_and_parts() -> None:
    truth = {0: 50.0, 1: 60.0, 2: 70.0, 3: 80.0}
    recs = [{"seed": s, "scores": [{"index": i, "score": float(i + s * (i == 0)), "acc_child": float(-i)}
                                   for i in range(4)]} for s in (0, 5)]
    rows = {(r["estimator"], r["part"]): r for r in fidelity_table({"cpnas": recs}, truth, bootstrap=0)}
    assert rows[("cpnas", "score")]["per_seed"][0]["kendall_tau"] == pytest.approx(1.0)
    # seed 5 moves genotype 0 to the top (score 5): τ = (3 − 3)/6 = 0 for that seed
    assert rows[("cpnas", "score")]["per_seed"][1]["kendall_tau"] == pytest.approx(0.0)
    # mean over seeds: scores 2.5, 1, 2, 3 → ranks 3,1,2,4 vs 1,2,3,4: τ = (4 − 2)/6
    assert rows[("cpnas", "score")]["mean_over_seeds"]["kendall_tau"] == pytest.approx(2 / 6)
    assert rows[("cpnas", "acc_child")]["mean_over_seeds"]["kendall_tau"] == pytest.approx(-1.0)
