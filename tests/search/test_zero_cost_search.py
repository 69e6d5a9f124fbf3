"""The zero_cost strategy: N uniform genotypes scored at initialisation, the best kept."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitnas.errors import ConfigError
from bitnas.search.config import SearchConfig
from bitnas.search.runner import run_search
from bitnas.space.genotypes import Genotype

COMMON = dict(strategy="zero_cost", data="fashion-mnist-embedded", train_subset=80, batch_size=16, init_channels=4,
              layers=2, progress="off", threads=1, structure="bireal", activation="approx_sign")


def test_scores_every_candidate_and_keeps_the_best(tmp_path: Path) -> None:
    res = run_search(SearchConfig(out=str(tmp_path / "a"), zero_cost_samples=4, zero_cost_estimator="zico", **COMMON))
    metrics = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["sample"] for m in metrics] == [0, 1, 2, 3] and all(m["estimator"] == "zico" for m in metrics)
    assert len({json.dumps(m["genotype"]) for m in metrics}) == 4
    best = max(metrics, key=lambda m: m["score"])
    saved = json.loads((tmp_path / "a" / "genotype.json").read_text())
    assert saved["genotype"] == best["genotype"] == res["genotype"] and saved["estimator"] == "zico"
    assert [s["score"] for s in saved["samples"]] == [m["score"] for m in metrics]
    assert saved["images_processed"] == 4 * 2 * 16  # zico reads both batches of every candidate
    Genotype.from_dict(saved["genotype"]).validate()
    # a candidate's score depends on the seed and the genotype only: a shorter run draws the same first ones
    short = run_search(SearchConfig(out=str(tmp_path / "b"), zero_cost_samples=2, zero_cost_estimator="zico", **COMMON))
    assert [s["score"] for s in short["samples"]] == [m["score"] for m in metrics[:2]]


@pytest.mark.parametrize("bad, match", [
    (dict(zero_cost_estimator="synflo"), "zero_cost_estimator: unknown zero-cost estimator 'synflo'"),
    (dict(zero_cost_estimator="zico", zero_cost_batches=1), "zico needs 2..1000 batches"),
    (dict(zero_cost_samples=0), "zero_cost_samples: must be at least 1"),
    (dict(random_samples=3), "does not read random_samples"),
])
def test_bad_settings_are_refused_before_any_file(tmp_path: Path, bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_search(SearchConfig(out=str(tmp_path / "x"), **{**COMMON, **bad}))
    assert not (tmp_path / "x").exists()
