"""Protocol reproducibility: ICC(1), spreads and τ between seeds and between arms, on hand-made records."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bitnas.study.agreement import arm_agreement, icc1, icc1k, protocol_agreement, seed_noise
from bitnas.study.fidelity import ground_truth
from bitnas.study.report import table_markdown
from bitnas.study.spec import parse_spec


def _icc_by_definition(groups: list[list[float]]) -> float:
    """ICC(1) of a balanced design straight from the one-way ANOVA table (Shrout & Fleiss 1979)."""
    a = np.array(groups, dtype=np.float64)
    g, k = a.shape
    msb = k * ((a.mean(1) - a.mean()) ** 2).sum() / (g - 1)
    msw = ((a - a.mean(1, keepdims=True)) ** 2).sum() / (g * (k - 1))
    return (msb - msw) / (msb + (k - 1) * msw)


def test_icc_against_a_hand_computation() -> None:
    # means 1.5, 3.5, 5.5 (grand 3.5): MSB = 2·(4 + 0 + 4)/2 = 8, MSW = 6·0.25/3 = 0.5 → 7.5/8.5
    assert icc1([[1, 2], [3, 4], [5, 6]]) == pytest.approx(7.5 / 8.5)
    assert icc1([[1, 1], [2, 2], [3, 3]]) == 1.0  # seeds never disagree
    assert icc1([[1, 2], [1, 2], [1, 2]]) == pytest.approx(-1.0)  # all the variance within genotypes
    rng = np.random.default_rng(3)
    groups = (rng.normal(size=(6, 1)) + 0.5 * rng.normal(size=(6, 3))).tolist()
    assert icc1(groups) == pytest.approx(_icc_by_definition(groups))
    assert np.isnan(icc1([[1, 2]])) and np.isnan(icc1([[1], [2], [3]]))


def test_icc_of_unequal_groups_uses_the_effective_group_size() -> None:
    groups = [[1.0, 2.0, 3.0], [4.0, 6.0], [7.0, 7.5, 8.0]]
    n, k = 8, 3
    grand = np.mean(sum(groups, []))
    msb = sum(len(g) * (np.mean(g) - grand) ** 2 for g in groups) / (k - 1)
    msw = sum(((np.array(g) - np.mean(g)) ** 2).sum() for g in groups) / (n - k)
    n0 = (n - (9 + 4 + 9) / n) / (k - 1)
    assert icc1(groups) == pytest.approx((msb - msw) / (msb + (n0 - 1) * msw))


def _records(arm: str, table: dict[int, dict[int, float]], shift: float = 1.0) -> list[dict]:
    return [{"id": f"{arm}/g{i:02d}/s{s}/train", "arm": arm, "kind": "train", "index": i, "seed": s,
             "val_top1": v, "test_top1": v - shift} for i, per in table.items() for s, v in per.items()]


def test_seed_noise_and_tau_between_seeds() -> None:
    table = {0: {0: 70.0, 1: 71.0, 2: 70.5}, 1: {0: 75.0, 1: 74.0, 2: 76.0}, 2: {0: 80.0, 1: 80.5, 2: 79.0},
             3: {0: 72.0, 1: 73.0}}
    recs = _records("noise", table) + [{"arm": "other", "kind": "train", "index": 0, "seed": 0, "val_top1": 1.0}]
    out = seed_noise(recs, "noise", bootstrap=50)
    v = out["val_top1"]
    assert v["genotypes"] == 4 and v["trainings"] == 11
    assert v["icc"] == pytest.approx(icc1([list(p.values()) for p in table.values()]))
    assert v["within_std"] == pytest.approx(np.sqrt(np.mean([np.var(list(p.values()), ddof=1) for p in table.values()])))
    assert v["between_std"] == pytest.approx(np.std([np.mean(list(p.values())) for p in table.values()], ddof=1))
    # every pair of seeds orders the four (or three) genotypes alike
    assert [p["seeds"] for p in v["seed_pairs"]] == [[0, 1], [0, 2], [1, 2]]
    assert v["kendall_tau_between_seeds"] == pytest.approx(1.0)
    assert out["test_top1"]["icc"] == pytest.approx(v["icc"])  # a constant shift changes nothing
    lo, hi = v["icc_ci"]
    assert lo <= hi


def test_seeds_that_reorder_the_genotypes_give_a_low_tau() -> None:
    table = {i: {0: float(i), 1: float(-i)} for i in range(5)}
    v = seed_noise(_records("n", table), "n", bootstrap=0)["val_top1"]
    assert v["kendall_tau_between_seeds"] == pytest.approx(-1.0) and v["icc"] < 0


def test_agreement_between_arms_on_shared_genotypes_and_the_mean_as_ground_truth() -> None:
    short = _records("short", {i: {0: 70.0 + i, 1: 72.0 + i} for i in range(5)})
    long_ = _records("long", {i: {i % 2: 80.0 + (i * 7) % 5} for i in range(6)})
    out = arm_agreement(short + long_, "short", "long", bootstrap=20)
    x = [71.0 + i for i in range(5)]
    y = [80.0 + (i * 7) % 5 for i in range(5)]
    concordant = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(5), 2))
    assert out["val_top1"]["m"] == 5
    assert out["val_top1"]["kendall_tau"] == pytest.approx(concordant / 10)
    assert ground_truth(short, "short") == {i: 71.0 + i for i in range(5)}


def test_study_report_has_the_reproducibility_section() -> None:
    spec = parse_spec({"name": "p", "data": "fashion-mnist-embedded", "seeds": [0, 1, 2],
                       "protocol": {"init_channels": 2, "layers": 2, "epochs": 1},
                       "arms": [{"name": "noise", "random_genotypes": 4, "seeds": [0, 1, 2]},
                                {"name": "long", "random_genotypes": 4, "train": {"epochs": 3}}]})
    table = {i: {s: 70.0 + 3 * i + s * 0.1 for s in (0, 1, 2)} for i in range(4)}
    recs = _records("noise", table) + _records("long", {i: {i % 3: 75.0 + i} for i in range(4)})
    agreement = protocol_agreement(spec, recs)
    assert [n["arm"] for n in agreement["seed_noise"]] == ["noise"]
    assert agreement["arm_agreement"][0]["arms"] == ["noise", "long"]
    assert agreement["arm_agreement"][0]["val_top1"]["kendall_tau"] == pytest.approx(1.0)
    md = table_markdown(spec, [], [], agreement)
    assert "## Protocol reproducibility" in md and "| noise | val_top1 | 4 (12 trainings) |" in md
    assert "| noise vs long | val_top1 | 4 | 1.00" in md


def test_icc_of_the_seed_mean_is_spearman_brown_of_icc1() -> None:
    """ICC(1,k) = (MSB − MSW) / MSB; by hand for [[1,2],[3,4],[5,6]]: MSB 8, MSW 0.5 → 15/16; with equal
    group sizes it equals k·ICC(1) / (1 + (k − 1)·ICC(1))."""
    assert icc1k([[1, 2], [3, 4], [5, 6]]) == pytest.approx(15 / 16)
    rng = np.random.default_rng(3)
    groups = [list(rng.normal(m, 1.0, 3)) for m in rng.normal(0, 1.0, 7)]
    r = icc1(groups)
    assert icc1k(groups) == pytest.approx(3 * r / (1 + 2 * r))
    assert icc1k([[1, 1], [2, 2]]) == 1.0 and np.isnan(icc1k([[1, 2]]))
