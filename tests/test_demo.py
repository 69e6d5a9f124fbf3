"""The demo pipeline end to end at a tiny size, and the config rules every command follows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitnas.cli import main
from bitnas.config import RECIPES_DIR, resolve_config
from bitnas.demo import DemoConfig, format_table, run_demo
from bitnas.errors import ConfigError
from bitnas.space.genotypes import Genotype


@pytest.mark.slow
def test_demo_pipeline_tiny(tmp_path: Path) -> None:
    # Every stage at its smallest: batches of 16, 16 validation images per CP-NAS sample (the search's
    # 35 samples and 7 removals, its checkpoints and plots are what the pipeline is made of).
    cfg = DemoConfig(out=str(tmp_path / "demo"), init_channels=4, layers=2, batch_size=16, search_subset=160,
                     val_subset=16, rounds=1, sample_steps=1, train_subset=200, epochs=1, progress="off")
    res = run_demo(cfg)
    out = tmp_path / "demo"
    g = Genotype.from_dict(json.loads((out / "genotype.json").read_text()))
    assert len(g.normal) == 8 and all(op != "none" for op, _ in g.normal + g.reduce)
    assert (out / "config.yaml").is_file()
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"search", "child"}  # the default method, plain, trains no fp32 parent
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    assert {"normal_cell.png", "reduction_cell.png", "cpnas_scores.png", "child_training.png"} <= pngs
    assert res["parent_top1"] is None
    # the reported figure is the test top-1 of the selected checkpoint, evaluated again independently
    from bitnas.train.evaluate import evaluate_checkpoint

    again = evaluate_checkpoint(str(out / "train" / "best.pt"), "fashion-mnist-embedded")
    assert again["num_images"] == 2000 and res["child_top1"] == pytest.approx(again["top1"], abs=1e-9)
    s = res["summary"]
    assert s["params_1bit"] > 0 and s["ops"] == pytest.approx(s["flops"] + s["bops"] / 64)
    table = format_table(res)
    assert "1-bit test top-1" in table and "parent" not in table and g.normal[0][0] in table
    with_parent = format_table({**res, "parent_top1": 71.25})  # method cp also reports its fp32 parent
    assert any("fp32 parent test top-1" in ln and "71.25 %" in ln for ln in with_parent.splitlines())
    assert "(parent + child)" in with_parent


def test_override_typo_is_refused_with_the_closest_name(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["search", "--strategy", "pcdarts", "epochz=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "epochz" in err[0] and "'epochs'" in err[0]


def test_bad_value_is_refused() -> None:
    from bitnas.search.config import SearchConfig

    with pytest.raises(ConfigError, match="epochs"):
        resolve_config(SearchConfig, overrides=["epochs=three"])
    with pytest.raises(ConfigError, match="edge_norm"):
        resolve_config(SearchConfig, overrides=["edge_norm=maybe"])


def test_recipe_then_flags_then_overrides(tmp_path: Path) -> None:
    from bitnas.search.config import SearchConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 7\nbatch_size: 32\nlayers: 6\n")
    cfg = resolve_config(SearchConfig, str(recipe), {"batch_size": "16"}, ["layers=4"])
    assert (cfg.epochs, cfg.batch_size, cfg.layers) == (7, 16, 4)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_every_shipped_recipe_resolves(recipe: str) -> None:
    import yaml

    from bitnas.search.config import SearchConfig
    from bitnas.train.config import TrainConfig

    data = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text())
    command = data.get("command") or recipe.split("_")[0]
    if command == "study":
        from bitnas.study.spec import load_spec

        spec = load_spec(recipe)
        assert spec.trials() and len(spec.seeds) >= 3
        return
    cls = {"search": SearchConfig, "train": TrainConfig, "demo": DemoConfig}[command]
    cfg = resolve_config(cls, recipe)
    if command == "search":
        from bitnas.search import strategies  # noqa: F401 - registers the strategies
        from bitnas.search.strategy import STRATEGIES, check_strategy_keys

        check_strategy_keys(cfg, STRATEGIES.get(cfg.strategy))


def test_recipes_command_lists_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert names == sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) and names


def test_overrides_may_stand_between_flags() -> None:
    from bitnas.cli import build_parser, parse_args
    from bitnas.config import config_from_args
    from bitnas.search.config import SearchConfig

    args = parse_args(build_parser(), ["search", "epochs=3", "--layers", "4", "w_lr=0.5", "--strategy", "darts",
                                       "arch_lr=0.1"])
    cfg = config_from_args(SearchConfig, args)
    assert (cfg.epochs, cfg.layers, cfg.w_lr, cfg.strategy, cfg.arch_lr) == (3, 4, 0.5, "darts", 0.1)
    assert main(["search", "epochs=3", "--layers", "4", "w_lrr=0.5"]) == 2


def test_training_uses_the_structure_recorded_by_the_search(tmp_path: Path) -> None:
    from bitnas.space.genotypes import GENOTYPES, build_hints

    f = tmp_path / "genotype.json"
    f.write_text(json.dumps({"genotype": GENOTYPES.get("DARTS_V2").to_dict(), "structure": "bireal",
                             "activation": "approx_sign"}))
    assert build_hints(str(f)) == {"structure": "bireal", "activation": "approx_sign"}
    assert build_hints("DARTS_V2") == {}
    rc = main(["train", "--genotype", str(f), "--data", "fashion-mnist-embedded", "--init-channels", "4",
               "--layers", "2", "--epochs", "1", "--train-subset", "64", "--batch-size", "32", "--out", str(tmp_path / "t"),
               "test_subset=50", "progress=off"])
    assert rc == 0
    from bitnas.common.checkpoint import load_checkpoint

    net = load_checkpoint(tmp_path / "t" / "last.pt")["arch"]["network"]
    assert net["structure"] == "bireal" and net["activation"] == "approx_sign"
