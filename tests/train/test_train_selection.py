"""Model selection reads the validation split only; the test split is evaluated once, at the end."""
from __future__ import annotations

from pathlib import Path

import pytest

from bitnas.train.config import TrainConfig
from bitnas.train.evaluate import evaluate_checkpoint
from bitnas.train.job import train
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(genotype="DARTS_V2", data="fashion-mnist-embedded", init_channels=4, layers=2, batch_size=32,
                epochs=3, train_subset=200, test_subset=100, progress="off", threads=1, out=str(out), lr=0.02)
    base.update(kw)
    return TrainConfig(**base).validate()


def test_default_carves_a_validation_split_and_selects_on_it(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path / "r", test_subset=0))
    recs = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    epochs, final = recs[:-1], recs[-1]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    # no test figure is computed before the end, so none can select anything
    assert not any(k.startswith("test_") for r in epochs for k in r)
    best = max(epochs, key=lambda r: (r["val_top1"], -r["epoch"]))
    assert final["final"] and final["selected_by"] == "val_top1"
    assert final["selected_epoch"] == best["epoch"] == res["selected_epoch"]
    assert res["val_top1"] == best["val_top1"]
    assert final["splits"]["val"] == 20 and final["splits"]["train"] == 180 and final["splits"]["test"] == 2000
    # the reported test figure is the selected checkpoint's, evaluated independently here
    assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == best["epoch"]
    again = evaluate_checkpoint(str(tmp_path / "r" / "best.pt"), "fashion-mnist-embedded")
    assert again["num_images"] == 2000
    assert res["test_top1"] == pytest.approx(again["top1"]) == pytest.approx(final["test_top1"])


def test_without_validation_nothing_is_selected(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path / "r", val_fraction=0.0, epochs=2))
    final = read_jsonl(tmp_path / "r" / "metrics.jsonl")[-1]
    assert final["selected_by"] == "last_epoch" and final["selected_epoch"] == 2 == res["selected_epoch"]
    assert "val" not in final["splits"] and res["val_top1"] is None


def test_test_eval_every_monitors_but_does_not_select(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path / "r", test_eval="every"))
    recs = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert all("test_top1" in r for r in recs[:-1])
    best = max(recs[:-1], key=lambda r: (r["val_top1"], -r["epoch"]))
    assert res["selected_epoch"] == best["epoch"]
    assert recs[-1]["test_top1"] == pytest.approx(best["test_top1"])


def test_two_stage_selects_only_fully_binary_epochs(tmp_path: Path) -> None:
    """Stage 1 trains real-valued weights; however good its validation figure, best.pt and the test
    figure must come from a stage-2 (fully binary) epoch, and equal an independent evaluation."""
    res = train(_cfg(tmp_path / "r", epochs=4, two_stage=True, test_subset=0))
    recs = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    epochs, final = recs[:-1], recs[-1]
    assert [r.get("stage") for r in epochs] == [1, 1, 2, 2]
    best = max(epochs[2:], key=lambda r: (r["val_top1"], -r["epoch"]))
    assert final["selected_epoch"] == best["epoch"] == res["selected_epoch"] and best["epoch"] in (3, 4)
    again = evaluate_checkpoint(str(tmp_path / "r" / "best.pt"), "fashion-mnist-embedded")
    assert res["test_top1"] == pytest.approx(again["top1"])


def test_selection_rule_skips_stage_one_records() -> None:
    from bitnas.train.trainer import Trainer

    t = Trainer.__new__(Trainer)  # the rule alone, without building a run
    t.best = {"key": "val_top1", "value": None, "epoch": None}
    assert not t._update_best({"epoch": 1, "stage": 1, "val_top1": 90.0}) and t.best["epoch"] is None
    assert t._update_best({"epoch": 3, "stage": 2, "val_top1": 50.0}) and t.best["epoch"] == 3
    assert not t._update_best({"epoch": 4, "stage": 2, "val_top1": 49.0}) and t.best["value"] == 50.0
    t.best = {"key": "val_top1", "value": None, "epoch": None}
    assert t._update_best({"epoch": 1, "val_top1": 1.0})  # single-stage runs: every epoch counts
