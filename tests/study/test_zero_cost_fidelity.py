"""Zero-cost estimators in a study's fidelity block: spec, trials, report rows, a tiny study end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bitnas.errors import ConfigError
from bitnas.study.fidelity import kendall_tau
from bitnas.study.report import fidelity_rows, table_markdown, arm_rows
from bitnas.study.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "name": "t", "data": "fashion-mnist-embedded", "seeds": [0, 1],
    "search": {"train_subset": 64, "init_channels": 4, "layers": 2},
    "protocol": {"init_channels": 2, "layers": 2, "epochs": 1},
    "arms": [{"name": "cp", "strategy": "cpnas", "search": {"rounds": 1}},
             {"name": "rg", "random_genotypes": 4}],
    "fidelity": {"genotypes": "rg", "estimators": ["cp"], "zero_cost": ["synflow", "naswot"]},
}


def _with(**fidelity) -> dict:
    d = yaml.safe_load(yaml.safe_dump(BASE))
    d["fidelity"].update(fidelity)
    return d


def test_zero_cost_trials_one_per_seed_after_the_search_scores() -> None:
    spec = parse_spec(_with())
    tail = [(t.id, t.kind, t.arm, t.seed) for t in spec.trials()][-4:]
    assert tail == [("fidelity/cp/s0/score", "score", "cp", 0), ("fidelity/cp/s1/score", "score", "cp", 1),
                    ("fidelity/_zero_cost/s0/score", "zero_cost", "rg", 0),
                    ("fidelity/_zero_cost/s1/score", "zero_cost", "rg", 1)]
    assert [t.id for t in spec.trials(fidelity_only=True)][-2:] == ["fidelity/_zero_cost/s0/score",
                                                                    "fidelity/_zero_cost/s1/score"]
    only = parse_spec(_with(estimators=[], seeds=[1], zero_cost_batches=3))
    assert only.fidelity.zero_cost == ("synflow", "naswot") and only.fidelity.zero_cost_batches == 3
    assert [t.id for t in only.trials(fidelity_only=True)] == [
        "rg/g00/train", "rg/g01/train", "rg/g02/train", "rg/g03/train", "fidelity/_zero_cost/s1/score"]
    again = parse_spec(spec.to_dict())
    assert again.fidelity == spec.fidelity


@pytest.mark.parametrize("change, message", [
    ({"zero_cost": ["synflo"]}, "fidelity: zero_cost: unknown zero-cost estimator 'synflo' (did you mean 'synflow'?)"),
    ({"zero_cost": ["zico", "zico"]}, "zero-cost estimator 'zico' listed twice"),
    ({"zero_cost": "zico"}, "zero_cost must be a list"),
    ({"zero_cost": [], "estimators": []}, "it or zero_cost non-empty"),
    ({"zero_cost_batches": -1}, "zero_cost_batches must be a count"),
])
def test_refusals(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_spec(_with(**change))
    assert message in str(e.value)


def _records(truth: list[float], per_seed: dict[int, list[float]]) -> list[dict]:
    recs = [{"id": f"rg/g{i:02d}/train", "arm": "rg", "kind": "train", "seed": 0, "index": i, "val_top1": v,
             "test_top1": v, "ops": 1.0, "params_1bit": 1, "params_32bit": 1} for i, v in enumerate(truth)]
    for s, scores in per_seed.items():
        recs.append({"id": f"fidelity/_zero_cost/s{s}/score", "arm": "rg", "kind": "zero_cost", "seed": s,
                     "estimators": ["synflow", "naswot"],
                     "scores": [{"index": i, "synflow": x, "naswot": -x} for i, x in enumerate(scores)]})
    return recs


def test_report_rows_per_zero_cost_estimator_per_seed_and_averaged() -> None:
    spec = parse_spec(_with(estimators=[]))
    truth = [70.0, 72.0, 71.0, 75.0]
    s0, s1 = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 9.0]
    rows = fidelity_rows(spec, _records(truth, {0: s0, 1: s1}))
    assert [(r["estimator"], r["part"]) for r in rows] == [("synflow (zero-cost)", "score"),
                                                           ("naswot (zero-cost)", "score")]
    syn, nas = rows
    assert [p["kendall_tau"] for p in syn["per_seed"]] == pytest.approx([kendall_tau(s0, truth), kendall_tau(s1, truth)])
    assert syn["per_seed"][1]["kendall_tau"] == pytest.approx(1.0)
    mean = [(a + b) / 2 for a, b in zip(s0, s1)]
    assert syn["mean_over_seeds"]["kendall_tau"] == pytest.approx(kendall_tau(mean, truth))
    assert nas["mean_over_seeds"]["kendall_tau"] == pytest.approx(-syn["mean_over_seeds"]["kendall_tau"])
    assert {r["kind"] for r in rows} == {"zero_cost"}
    table = table_markdown(spec, arm_rows(spec, _records(truth, {})), rows)
    assert "| synflow (zero-cost) | score | 4 |" in table and "| naswot (zero-cost) | score | 4 |" in table
    assert "Zero-cost estimators score" in table
    search_only = [{**syn, "estimator": "cp", "kind": "search"}]  # a study without them reads as before
    assert "Zero-cost" not in table_markdown(spec, arm_rows(spec, _records(truth, {})), search_only)


@pytest.mark.slow  # tens of seconds: a run killed and resumed, a study, or two ranks
def test_tiny_study_with_zero_cost_fidelity(tmp_path: Path) -> None:
    study = {"name": "tinyzc", "data": "fashion-mnist-embedded", "seeds": [0, 1], "workers": 2,
             "protocol": {"init_channels": 2, "layers": 2, "epochs": 1, "train_subset": 40, "test_subset": 20,
                          "batch_size": 20, "structure": "bireal"},
             "arms": [{"name": "rg", "random_genotypes": 3}],
             "fidelity": {"genotypes": "rg", "zero_cost": ["params", "synflow", "grad_norm", "naswot", "zico"],
                          "bootstrap": 20}}
    path, out = tmp_path / "tinyzc.yaml", tmp_path / "study"
    path.write_text(yaml.safe_dump(study))
    p = subprocess.run([sys.executable, "-m", "bitnas", "study", str(path), "--out", str(out)], cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(ln) for ln in (out / "trials.jsonl").read_text().splitlines()]
    zc = [r for r in recs if r["kind"] == "zero_cost"]
    assert [r["id"] for r in zc] == ["fidelity/_zero_cost/s0/score", "fidelity/_zero_cost/s1/score"]
    assert all([s["index"] for s in r["scores"]] == [0, 1, 2] and r["config"]["seed"] == r["seed"] for r in zc)
    # the genotypes scored are those trained; each record's scores are its trial's own file
    trained = {r["index"]: r["genotype"] for r in recs if r["kind"] == "train"}
    listed = json.loads((out / "trials/fidelity/genotypes.json").read_text())
    assert [trained[i] for i in range(3)] == listed
    own = json.loads((out / "trials/fidelity/_zero_cost/s1/score/scores.json").read_text())
    assert zc[1]["scores"] == own["scores"] and zc[0]["scores"] != zc[1]["scores"]
    report = json.loads((out / "report.json").read_text())
    assert [r["estimator"] for r in report["fidelity"]] == [f"{n} (zero-cost)" for n in study["fidelity"]["zero_cost"]]
    assert all(len(r["per_seed"]) == 2 for r in report["fidelity"])
    assert "| zico (zero-cost) | score | 3 |" in (out / "table.md").read_text()
    assert (out / "plots/rank_fidelity.png").is_file()
