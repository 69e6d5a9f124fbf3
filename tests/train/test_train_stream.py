"""`bitnas train` on a streamed image folder with 2 worker processes: stopped by a signal mid-epoch,
resumed, SIGKILLed mid-epoch, resumed to the end, it ends bitwise as the uninterrupted run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import run_bitnas

from bitnas.cli import main
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from imagefolders import write_image_folder  # noqa: E402

TIMING = {"seconds", "train_seconds", "images_per_second", "elapsed"}


def argv(folder: Path, out: Path) -> list[str]:
    return ["train", "--out", str(out), "--genotype", "DARTS_V2", "--data", f"imagefolder:{folder}",
            "--init-channels", "4", "--layers", "2", "--batch-size", "16", "--epochs", "2",
            "progress=off", "threads=1", "image_size=16", "stream=on", "num_workers=2", "bad_images=skip",
            "random_resized_crop=0.25", "hflip=true", "color_jitter=0.3", "lighting=0.1", "eval_crop=0.875",
            "cutout=4", "drop_path_prob=0.2"]


def strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.slow  # tens of seconds: a run killed and resumed, a study, or two ranks
def test_streamed_training_stopped_killed_and_resumed_is_bitwise_identical(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=40, val_per_class=6)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(argv(folder, ref)) == 0

    stop = [{"at": "train.step", "index": 3, "do": "signal", "signal": "SIGTERM"}]
    p = run_bitnas(argv(folder, run), env={"BITNAS_FAULTS": json.dumps(stop)})
    assert p.returncode == 143, p.stderr[-3000:]
    ck = load_checkpoint(run / "last.pt")
    assert ck["epoch"] == 0 and ck["loader"]["batch"] == 3 and ck["partial"] is not None

    kill = [{"at": "train.step", "index": ck["loader"]["num_batches"] + 2, "do": "kill"}]
    p = run_bitnas([*argv(folder, run), "--resume"], env={"BITNAS_FAULTS": json.dumps(kill)})
    assert p.returncode == -9, p.stderr[-3000:]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # epoch 1 finished, epoch 2 killed mid-way

    p = run_bitnas([*argv(folder, run), "--resume"])
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(ref / name), load_checkpoint(run / name)
        assert a["global_step"] == b["global_step"] and a["loader"] == b["loader"]
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), f"{name}: {k}"
    assert strip(read_jsonl(ref / "metrics.jsonl")) == strip(read_jsonl(run / "metrics.jsonl"))
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (ref, run))
    assert ra["test_top1"] == rb["test_top1"] and ra["splits"] == rb["splits"]

    # `bitnas eval` streams the test split as training did (classes, statistics, centre crop)
    assert main(["eval", str(run / "best.pt"), "--data", f"imagefolder:{folder}", "--batch-size", "16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (r["top1"], r["loss"], r["num_images"]) == (rb["test_top1"], rb["test_loss"], rb["splits"]["test"])


@pytest.mark.parametrize("extra, message", [
    (["stream=on"], "stream on: only image folders stream"),
    (["random_resized_crop=0.08"], "random_resized_crop: applies to streamed image folders only"),
])
def test_streaming_options_refused_for_in_memory_data(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                                     message: str) -> None:
    assert main(["train", "--data", "fashion-mnist-embedded", "--epochs", "1", "--out", str(tmp_path / "run"),
                 *extra]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"bitnas: error: {message}")


def test_stream_auto_reads_small_folders_into_memory_and_streams_on_request(tmp_path: Path) -> None:
    from bitnas.data import ImageDataset
    from bitnas.data.formats.imagefolder import ImageFiles
    from bitnas.train.config import TrainConfig
    from bitnas.train.data import load_train_data

    folder = write_image_folder(tmp_path / "images", classes=3, per_class=12, val_per_class=4, odd_files=False)
    base = dict(data=f"imagefolder:{folder}", image_size=16, batch_size=4)
    small = load_train_data(TrainConfig(**base))
    assert isinstance(small.train, ImageDataset) and small.stream is None
    for extra in ({"stream": "on"}, {"random_resized_crop": 0.5}, {"class_subset": "2"}):
        data = load_train_data(TrainConfig(**base, **extra))
        assert isinstance(data.train, ImageFiles) and isinstance(data.test, ImageFiles) and data.stream is not None
        assert data.in_channels == 3 and data.image_size == 16
    two = load_train_data(TrainConfig(**base, class_subset="2"))
    assert two.num_classes == 2 and set(two.test.labels.tolist()) == {0, 1}
    # without subsets, the streamed statistics are the in-memory ones (every file sampled)
    assert load_train_data(TrainConfig(**base, stream="on")).train.mean == small.train.mean
