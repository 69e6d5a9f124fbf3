"""`bitnas train` / `bitnas eval` through the CLI: tiny acceptance run, refusals, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bitnas.cli import main
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl

from train_helpers import TINY, TINY_KV, run_bitnas


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training run (the acceptance command at tiny size), shared by the eval tests."""
    out = tmp_path_factory.mktemp("run") / "t1"
    rc = main(["train", *TINY, "--epochs", "1", "--train-subset", "64", "--out", str(out), *TINY_KV])
    assert rc == 0
    return out


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("bitnas: error: ")
    return lines[-1]


def test_train_writes_run_directory(trained: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "result.json"):
        assert (trained / name).is_file(), name
    recs = read_jsonl(trained / "metrics.jsonl")
    assert len(recs) == 2 and recs[0]["epoch"] == 1 and recs[1]["final"] is True
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "lr", "seconds"):
        assert key in recs[0]
    assert not any(k.startswith("test_") for k in recs[0])
    for key in ("test_loss", "test_top1", "test_top5", "selected_epoch", "splits"):
        assert key in recs[1]
    ck = load_checkpoint(trained / "last.pt")
    for key in ("model", "optimizer", "scheduler", "rng", "loader", "epoch", "arch", "precision", "genotype",
                "config", "metrics"):
        assert key in ck, key
    assert ck["epoch"] == 1 and ck["precision"] == "binary" and ck["arch"]["network"]["in_channels"] == 1


def _image_folder(root: Path, mode: str, classes: int, per_class: int = 2) -> Path:
    """root/{train,test}/<class>/<i>.png of 28×28 images."""
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new(mode, (28, 28), (25 * c + i,) * len(mode)).save(d / f"{i}.png")
    return root


def test_eval_json(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Ten grayscale classes like Fashion-MNIST, 20 test images: the eval path without the wait.
    data = _image_folder(tmp_path / "gray", "L", classes=10)
    rc = main(["eval", str(trained / "last.pt"), "--data", f"imagefolder:{data}", "--json"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert {"top1", "top5", "loss", "num_images"} <= set(r)
    assert r["num_images"] == 20 and 0.0 <= r["top1"] <= r["top5"] <= 100.0


@pytest.mark.parametrize("flag, value, match", [
    ("--genotype", "DARTS_V1", "another genotype"),
    ("--precision", "fp32", "holds a binary network"),
])
def test_eval_refuses_mismatch(trained: Path, capsys: pytest.CaptureFixture, flag: str, value: str, match: str) -> None:
    rc = main(["eval", str(trained / "last.pt"), "--data", "fashion-mnist-embedded", flag, value])
    assert rc == 2
    assert match in _one_error_line(capsys.readouterr().err)


def test_eval_refuses_dataset_of_other_shape(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _image_folder(tmp_path / "rgb", "RGB", classes=3, per_class=1)
    rc = main(["eval", str(trained / "last.pt"), "--data", f"imagefolder:{data}"])
    assert rc == 2
    assert "3 channel(s) and 3 classes" in _one_error_line(capsys.readouterr().err)


def test_train_unknown_genotype(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "--genotype", "DARTS_V9", "--data", "fashion-mnist-embedded", "--out", str(tmp_path / "x")])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "DARTS_V9" in line


def test_eval_missing_checkpoint_subprocess(tmp_path: Path) -> None:
    p = run_bitnas(["eval", str(tmp_path / "nope.pt"), "--data", "fashion-mnist-embedded"])
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"bitnas: error: {tmp_path / 'nope.pt'}: checkpoint not found"]


def test_images_per_second_after_a_mid_epoch_resume_counts_only_the_images_this_run_trained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after step 2 of 14 (461 images in full batches of 32, the last partial one dropped), the
    resumed run times the other 12 batches: 384 images. (Both runs in this process: the figure comes
    from the checkpoint and the run's own clock, not from the process.)"""
    from bitnas.common import faults

    out = tmp_path / "t"
    args = ["train", *TINY, "--epochs", "1", "--train-subset", "512", "--out", str(out), *TINY_KV]
    rule = {"at": "train.step", "index": 2, "do": "signal", "signal": "SIGTERM"}
    monkeypatch.setenv(faults.ENV, json.dumps([rule]))
    assert main(args) == 143
    monkeypatch.delenv(faults.ENV)
    assert main([*args[:1], "--resume", *args[1:]]) == 0
    rec = read_jsonl(out / "metrics.jsonl")[0]
    assert rec["epoch"] == 1
    assert rec["images_per_second"] * rec["train_seconds"] == pytest.approx((461 // 32 - 2) * 32, rel=0.01)
