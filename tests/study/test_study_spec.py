"""Study specs: every mistake refused before any work, trials enumerated in a fixed order."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bitnas.errors import ConfigError
from bitnas.study.records import random_genotype_for
from bitnas.study.spec import load_spec, parse_spec

BASE = {
    "name": "t", "data": "fashion-mnist-embedded", "seeds": [0, 1],
    "search": {"train_subset": 64, "init_channels": 4, "layers": 2},
    "protocol": {"init_channels": 2, "layers": 2, "epochs": 1},
    "arms": [{"name": "cp", "strategy": "cpnas", "search": {"rounds": 1}},
             {"name": "rg", "random_genotypes": 3},
             {"name": "v2", "genotype": "DARTS_V2"},
             {"name": "br", "network": "bireal", "train": {"lr": 0.01}}],
    "fidelity": {"genotypes": "rg", "estimators": ["cp"]},
}


def _with(**kw):
    d = yaml.safe_load(yaml.safe_dump(BASE))
    d.update(kw)
    return d


def test_trials_in_canonical_order_with_dependencies() -> None:
    spec = parse_spec(_with())
    ids = [t.id for t in spec.trials()]
    assert ids == ["cp/s0/search", "cp/s0/train", "cp/s1/search", "cp/s1/train", "rg/g00/train", "rg/g01/train",
                   "rg/g02/train", "v2/s0/train", "v2/s1/train", "br/s0/train", "br/s1/train",
                   "fidelity/cp/s0/score", "fidelity/cp/s1/score"]
    by = {t.id: t for t in spec.trials()}
    assert by["cp/s1/train"].deps == ("cp/s1/search",) and by["fidelity/cp/s0/score"].deps == ("cp/s0/search",)
    assert [by[f"rg/g0{i}/train"].seed for i in range(3)] == [0, 1, 0]
    assert [t.id for t in spec.trials(fidelity_only=True)] == [
        "cp/s0/search", "cp/s1/search", "rg/g00/train", "rg/g01/train", "rg/g02/train",
        "fidelity/cp/s0/score", "fidelity/cp/s1/score"]
    one_seed = parse_spec(_with(fidelity={"genotypes": "rg", "estimators": ["cp"], "seeds": [1]}))
    assert [t.id for t in one_seed.trials(fidelity_only=True)] == [  # --fidelity searches only the fidelity seeds
        "cp/s1/search", "rg/g00/train", "rg/g01/train", "rg/g02/train", "fidelity/cp/s1/score"]
    assert "cp/s0/search" in [t.id for t in one_seed.trials()]  # the full study still searches every seed


def test_random_genotypes_with_seeds_train_every_draw_under_each_seed() -> None:
    data = _with(arms=[{"name": "noise", "random_genotypes": 2, "seeds": [1, 0]},
                       {"name": "long", "random_genotypes": 2, "train": {"epochs": 3}}])
    data.pop("fidelity")
    spec = parse_spec(data)
    trials = spec.trials()
    assert [(t.id, t.seed, t.index) for t in trials] == [
        ("noise/g00/s1/train", 1, 0), ("noise/g00/s0/train", 0, 0), ("noise/g01/s1/train", 1, 1),
        ("noise/g01/s0/train", 0, 1), ("long/g00/train", 0, 0), ("long/g01/train", 1, 1)]
    assert parse_spec(spec.to_dict()).arm("noise").seeds == (1, 0)  # survives study.yaml
    assert "seeds" not in spec.to_dict()["arms"][1]


def test_random_genotypes_are_a_pure_function_of_space_and_index() -> None:
    arm = parse_spec(_with()).arm("rg")
    a = [random_genotype_for(arm, i) for i in range(3)]
    assert a == [random_genotype_for(arm, i) for i in range(3)] and len({str(g) for g in a}) == 3
    assert all(op != "none" for g in a for op, _ in g.normal + g.reduce)


@pytest.mark.parametrize("change,message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [0, 0]}, "distinct"),
    ({"workers": -1}, "workers must be"),
    ({"executor": "slurm"}, "executor must be one of local, ray"),
    ({"protocol": {"epochs": 0}}, "epochs: must be at least 1"),
    ({"protocol": {"seed": 3}}, "'seed' is set per trial"),
    ({"protocol": {"epochz": 3}}, "did you mean 'epochs'"),
    ({"search": {"rounds": 2}}, "'rounds' is read by some strategies only"),
    ({"arms": []}, "arms must be a non-empty list"),
    ({"arms": [{"name": "x", "strategy": "cpnas", "search": {"epochs": 3}}]}, "strategy cpnas does not read epochs"),
    ({"arms": [{"name": "x", "strategy": "nope"}]}, "unknown search strategy 'nope'"),
    ({"arms": [{"name": "x", "genotype": "DARTS_V9"}]}, "DARTS_V9"),
    ({"arms": [{"name": "x", "network": "resnet"}]}, "unknown hand-designed network 'resnet'"),
    ({"arms": [{"name": "x", "random_genotypes": 0}]}, "random_genotypes must be a count"),
    ({"arms": [{"name": "x", "random_genotypes": 2, "seeds": [0, 5]}]}, r"distinct study seeds \[0, 1\]"),
    ({"arms": [{"name": "x", "random_genotypes": 2, "seeds": [1, 1]}]}, "distinct study seeds"),
    ({"arms": [{"name": "x", "genotype": "DARTS_V2", "seeds": [0]}]}, "seeds: belongs to random_genotypes arms"),
    ({"arms": [{"name": "x/y", "genotype": "DARTS_V2"}]}, "names a folder"),
    ({"arms": [{"name": "a", "genotype": "DARTS_V2"}, {"name": "a", "network": "bireal"}]}, "used twice"),
    ({"arms": [{"name": "a", "genotype": "DARTS_V2", "network": "bireal"}]}, "exactly one of"),
    ({"arms": [{"name": "a", "genotype": "DARTS_V2", "train": {"lr": -1}}]}, "lr: must be positive"),
    ({"fidelity": {"genotypes": "v2", "estimators": ["cp"]}}, "must name a random_genotypes arm"),
    ({"fidelity": {"genotypes": "rg", "estimators": ["v2"]}}, "not a strategy arm"),
    ({"fidelity": {"genotypes": "rg", "estimators": ["cp"], "seeds": [7]}}, "seeds must be a list of the study's"),
    ({"arms": [*BASE["arms"], {"name": "ub", "strategy": "ubnas"}],
      "fidelity": {"genotypes": "rg", "estimators": ["ub"]}},
     r"estimator 'ub' searches the ubnas space, which lacks dil_conv_3x3, .*give it search: \{space: cpnas\}"),
])
def test_refusals(change: dict, message: str) -> None:
    data = _with(**change)
    if "arms" in change and "fidelity" not in change:
        data.pop("fidelity")
    with pytest.raises(ConfigError, match=message):
        parse_spec(data)


def test_load_with_overrides(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(BASE))
    spec = load_spec(str(p), ["workers=3", "protocol.epochs=2", "search.layers=3"])
    assert spec.workers == 3 and spec.protocol["epochs"] == 2 and spec.search["layers"] == 3
    with pytest.raises(ConfigError, match="only protocol.KEY and search.KEY"):
        load_spec(str(p), ["arms.x=1"])
    p.write_text("command: train\n")
    with pytest.raises(ConfigError, match="not a study"):
        load_spec(str(p))
    p.write_bytes(b"\xff\xfe: [")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_spec(str(p))
    p.write_text("name: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(str(p))


def test_dotted_overrides_may_follow_the_flags(tmp_path, capsys) -> None:
    """`bitnas study SPEC --out DIR protocol.KEY=V`: the dotted override reaches the spec (it is not an
    'unrecognized argument'), and a bad one is refused before the study folder exists."""
    from bitnas.cli import main

    out = tmp_path / "s"
    assert main(["study", "study_methods_fmnist_cpu", "--out", str(out), "protocol.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "protocol: unknown key 'bogus'" in err and "unrecognized" not in err and not out.exists()


def test_table_of_a_study_not_yet_run_says_what_is_planned_and_what_arms_change() -> None:
    from bitnas.study.report import arm_rows, table_markdown

    spec = parse_spec(_with())
    rows = arm_rows(spec, [])
    assert [(r["arm"], r["n"], r["planned"]) for r in rows] == [("cp", 0, 2), ("rg", 0, 3), ("v2", 0, 2), ("br", 0, 2)]
    table = table_markdown(spec, rows, [])
    assert "**Incomplete**: 0 of 9 trainings finished" in table and "| rg | random_genotypes | 0/3 |" in table
    assert "Arms that change the protocol: `br`: lr=0.01." in table
