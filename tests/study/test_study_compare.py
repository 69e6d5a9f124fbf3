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
