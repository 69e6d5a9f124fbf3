"""Arm against control: difference of means, bootstrap interval, permutation p-value, against brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bitnas.errors import ConfigError
from bitnas.study.compare import bootstrap_difference, compare_to_control, permutation_p
from bitnas.study.report import comparison_rows, table_markdown
from bitnas.study.spec import parse_spec


def test_exact_permutation_p_by_hand() -> None:
    # pooled 1..4 split 2/2: 6 splits, |difference| = 2 only for {3,4}|{1,2} and {1,2}|{3,4}
    assert permutation_p([3, 4], [1, 2]) == (pytest.approx(2 / 6), "exact")
    assert permutation_p([5.0], [1.0, 2.0, 3.0])[0] == pytest.approx(1 / 4)  # only 5 alone is that far
    assert permutation_p([1, 2], [1, 2])[0] == 1.0


def test_exact_p_equals_brute_force_and_monte_carlo_approaches_it() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 4).tolist(), rng.normal(0.0, 1.0, 7).tolist()
    pooled = a + b
    obs = abs(np.mean(a) - np.mean(b))
    splits = list(itertools.combinations(range(11), 4))
    brute = sum(abs(np.mean([pooled[i] for i in s]) - np.mean([pooled[i] for i in range(11) if i not in s]))
                >= obs - 1e-12 for s in splits) / len(splits)
    exact, how = permutation_p(a, b)
    assert how == "exact" and exact == pytest.approx(brute)
    mc, how = permutation_p(a, b, permutations=20_000, exact_limit=0)
    assert how == "monte carlo" and mc == pytest.approx(brute, abs=0.015) and mc > 0


def test_bootstrap_interval_closed_forms() -> None:
    assert bootstrap_difference([2.0, 2.0], [1.0, 1.0, 1.0], n=500) == (1.0, 1.0)
    # a = [0, 1] resampled: mean 0, 0.5, 1 with probability 1/4, 1/2, 1/4 → 2.5 / 97.5 percentiles 0 and 1
    assert bootstrap_difference([0.0, 1.0], [0.0, 0.0], n=4000) == (0.0, 1.0)
    assert all(np.isnan(bootstrap_difference([80.0], [1.0, 2.0])))  # one seed: no interval
    lo, hi = bootstrap_difference([80.0, 81.0, 79.5], [78.0, 77.0, 79.0, 78.5, 76.5], n=4000)
    assert lo < np.mean([80.0, 81.0, 79.5]) - np.mean([78.0, 77.0, 79.0, 78.5, 76.5]) < hi and lo > 0


def test_compare_rows_and_the_table() -> None:
    spec = parse_spec({"name": "c", "data": "fashion-mnist-embedded", "seeds": [0, 1, 2],
                       "protocol": {"init_channels": 2, "layers": 2, "epochs": 1},
                       "arms": [{"name": "v2", "genotype": "DARTS_V2"}, {"name": "rg", "random_genotypes": 6}]})
    assert spec.control == "rg"
    recs = [{"arm": "v2", "kind": "train", "test_top1": v} for v in (80.0, 81.0, 80.5)]
    recs += [{"arm": "rg", "kind": "train", "test_top1": v} for v in (77.0, 78.0, 76.0, 79.0, 77.5, 78.5)]
    rows = comparison_rows(spec, recs)
    assert [r["arm"] for r in rows] == ["v2"]
    r = rows[0]
    assert r["difference"] == pytest.approx(80.5 - 77.666666666)
    assert r["p_method"] == "exact" and r["p_value"] == pytest.approx(1 / 84)  # the 3 best of 9 values: 1 of C(9,3)
    md = table_markdown(spec, [], [], None, rows)
    assert "## Against the control `rg`" in md and "| v2 | 3 | 80.50 | +2.83 |" in md
    assert r["verdict"] == "better" and md.rstrip().endswith("| better |")
    assert compare_to_control({"rg": [1.0]}, "rg") == []


def test_verdict() -> None:
    from bitnas.study.compare import verdict

    assert verdict(0.01, [0.2, 1.0]) == "better" and verdict(0.01, [-1.0, -0.1]) == "worse"
    assert verdict(0.01, [-0.1, 1.0]) == "not shown" and verdict(0.2, [0.2, 1.0]) == "not shown"
    assert verdict(0.01, [float("nan")] * 2) == "not shown"


def test_control_must_be_a_random_genotypes_arm() -> None:
    with pytest.raises(ConfigError, match="control must name a random_genotypes arm, 'v2' is a genotype arm"):
        parse_spec({"name": "c", "data": "fashion-mnist-embedded", "protocol": {"epochs": 1},
                    "arms": [{"name": "v2", "genotype": "DARTS_V2"}], "control": "v2"})


def test_a_control_with_seeds_per_genotype_is_compared_by_genotype() -> None:
    # genotype means 0.5, 2.5, 4.5 against 11 and 12: of the C(5, 2) = 10 splits of the pooled five
    # values only {11, 12} is 9 points apart; six independent control values would give 1 / C(8, 2)
    groups = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    flat = [v for g in groups for v in g]
    row = compare_to_control({"c": flat, "arm": [11.0, 12.0]}, "c", control_groups=groups)[0]
    assert row["p_value"] == pytest.approx(1 / 10) and row["p_method"] == "exact"
    assert row["control_unit"] == "genotype mean" and row["control_genotypes"] == 3 and row["n_control"] == 6
    assert compare_to_control({"c": flat, "arm": [11.0, 12.0]}, "c")[0]["p_value"] == pytest.approx(1 / 28)
    # one seed per genotype: the plain comparison
    single = compare_to_control({"c": flat, "arm": [11.0, 12.0]}, "c", control_groups=[[v] for v in flat])[0]
    assert single["control_unit"] == "training" and single["p_value"] == pytest.approx(1 / 28)


def test_two_stage_bootstrap_closed_form() -> None:
    from bitnas.study.compare import cluster_bootstrap_means

    rng = np.random.default_rng(0)
    # seeds identical within a genotype: two-stage = resampling the 2 genotype means, variance 25 / 2;
    # the 6 values treated as independent would give 25 / 6
    means = cluster_bootstrap_means([[0.0] * 3, [10.0] * 3], 40_000, rng)
    assert set(np.unique(means)) == {0.0, 5.0, 10.0} and np.var(means) == pytest.approx(12.5, rel=0.03)
    # one genotype: only the seeds vary; [0, 1] resampled → variance 1/8 (0.25 / 2)
    assert np.var(cluster_bootstrap_means([[0.0, 1.0]], 40_000, rng)) == pytest.approx(0.125, rel=0.03)
    # unequal group sizes take the general path: means 0 and 10 with a 1-member and a 3-member group
    uneven = cluster_bootstrap_means([[0.0], [10.0, 10.0, 10.0]], 20_000, rng)
    assert set(np.unique(uneven)) == {0.0, 5.0, 10.0} and np.var(uneven) == pytest.approx(12.5, rel=0.05)
    flat_lo, flat_hi = bootstrap_difference([20.0, 21.0], [0.0] * 3 + [10.0] * 3, n=4000)
    lo, hi = bootstrap_difference([20.0, 21.0], [0.0] * 3 + [10.0] * 3, n=4000, b_groups=[[0.0] * 3, [10.0] * 3])
    assert hi - lo > flat_hi - flat_lo


def test_comparison_rows_group_the_control_by_genotype_index() -> None:
    spec = parse_spec({"name": "c", "data": "fashion-mnist-embedded", "seeds": [0, 1],
                       "protocol": {"init_channels": 2, "layers": 2, "epochs": 1},
                       "arms": [{"name": "v2", "genotype": "DARTS_V2"},
                                {"name": "rg", "random_genotypes": 3, "seeds": [0, 1]}]})
    recs = [{"arm": "v2", "kind": "train", "test_top1": v} for v in (11.0, 12.0)]
    recs += [{"arm": "rg", "kind": "train", "index": i, "seed": s, "test_top1": 2.0 * i + s}
             for i in range(3) for s in (0, 1)]
    row = comparison_rows(spec, recs)[0]
    assert row["control_genotypes"] == 3 and row["p_value"] == pytest.approx(1 / 10)
    md = table_markdown(spec, [], [], None, [row])
    assert "6 trainings of 3 genotypes" in md and "genotype means" in md
