"""Fashion-MNIST IDX loading and its error messages."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bitnas.data import datasets, load_dataset
from bitnas.errors import BitnasError, DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path: Path, fmnist_writer, gz: bool) -> None:
    written = fmnist_writer(tmp_path / "fm", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset(f"fashion-mnist:{tmp_path / 'fm'}", split)
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        assert ds.images.shape == (len(written[f"{prefix}_labels"]), 1, 28, 28)
        assert np.array_equal(ds.images[:, 0].numpy(), written[f"{prefix}_images"])
        assert np.array_equal(ds.labels.numpy(), written[f"{prefix}_labels"])
        assert ds.num_classes == 10 and ds.name == "fashion-mnist"
        assert ds.mean == (0.2860,) and ds.std == (0.3530,)
        assert ds.source == str(tmp_path / "fm")
        assert len(ds) == len(written[f"{prefix}_labels"])


def test_parent_directory_accepted(tmp_path: Path, fmnist_writer) -> None:
    fmnist_writer(tmp_path / "fashion-mnist", gz=True)
    assert len(load_dataset(f"fashion-mnist:{tmp_path}", "train")) == 30


def test_default_search_env(isolated_search, fmnist_writer) -> None:
    fmnist_writer(isolated_search["env"] / "fashion-mnist", gz=False)
    ds = load_dataset("fashion-mnist", "test")
    assert len(ds) == 20 and ds.source == str(isolated_search["env"] / "fashion-mnist")


def test_default_search_cwd_shared(isolated_search, fmnist_writer) -> None:
    fmnist_writer(isolated_search["cwd_shared"] / "fashion-mnist", gz=True)
    ds = load_dataset("fashion-mnist", "train")
    assert Path(ds.source).resolve() == (isolated_search["cwd_shared"] / "fashion-mnist").resolve()


def test_missing_file_names_file_and_dir(tmp_path: Path, fmnist_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=True)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found in .*fm"):
        load_dataset(f"fashion-mnist:{d}", "test")


def test_explicit_bad_path_does_not_fall_back(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"fashion-mnist:.*nope: directory does not exist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nope'}", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[\.gz\] not found in .*empty"):
        load_dataset(f"fashion-mnist:{tmp_path / 'empty'}", "train")


def test_incomplete_default_copy_is_an_error(isolated_search, fmnist_writer, caplog) -> None:
    d = isolated_search["env"] / "fashion-mnist"
    fmnist_writer(d, gz=True)
    (d / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[\.gz\] not found in .*env"):
        load_dataset("fashion-mnist", "train")


def test_wrong_magic(tmp_path: Path, fmnist_writer, idx_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=False)
    idx_writer(d / "train-images-idx3-ubyte", np.zeros((30, 28, 28), np.uint8), 0x00000801 + 0x10)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: wrong IDX magic number 0x00000811 "
                                        r"\(expected 0x00000803"):
        load_dataset(f"fashion-mnist:{d}", "train")


def test_labels_file_swapped_for_images(tmp_path: Path, fmnist_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=False)
    (d / "t10k-labels-idx1-ubyte").write_bytes((d / "t10k-images-idx3-ubyte").read_bytes())
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: wrong IDX magic number 0x00000803"):
        load_dataset(f"fashion-mnist:{d}", "test")


def test_truncated_gzip(tmp_path: Path, fmnist_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=True)
    f = d / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated gzip file"):
        load_dataset(f"fashion-mnist:{d}", "train")


def test_corrupt_gzip(tmp_path: Path, fmnist_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=True)
    f = d / "train-labels-idx1-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[12:20] = b"\xff" * 8
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: (corrupt|truncated) gzip file"):
        load_dataset(f"fashion-mnist:{d}", "train")


def test_truncated_raw_file(tmp_path: Path, fmnist_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=False)
    f = d / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated IDX file .*23520 data bytes, "
                                        r"found 23515"):
        load_dataset(f"fashion-mnist:{d}", "train")
    f.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match=r"truncated IDX file \(3 bytes"):
        load_dataset(f"fashion-mnist:{d}", "train")


def test_truncated_inside_valid_gzip(tmp_path: Path, fmnist_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=True)
    f = d / "train-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-1]))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: truncated IDX file"):
        load_dataset(f"fashion-mnist:{d}", "train")


def test_count_mismatch(tmp_path: Path, fmnist_writer, idx_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=True)
    idx_writer(d / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8), LABELS_MAGIC)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: 29 labels but "
                                        r"train-images-idx3-ubyte\.gz has 30 images"):
        load_dataset(f"fashion-mnist:{d}", "train")


def test_label_out_of_range(tmp_path: Path, fmnist_writer, idx_writer) -> None:
    d = tmp_path / "fm"
    fmnist_writer(d, gz=False)
    labels = np.zeros(20, np.uint8)
    labels[7] = 10
    idx_writer(d / "t10k-labels-idx1-ubyte", labels, LABELS_MAGIC)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 10 at index 7 is out of range "
                                        r"\(expected 0\.\.9"):
        load_dataset(f"fashion-mnist:{d}", "test")


def test_empty_dataset(tmp_path: Path, idx_writer) -> None:
    d = tmp_path / "fm"
    d.mkdir()
    idx_writer(d / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8), IMAGES_MAGIC)
    idx_writer(d / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8), LABELS_MAGIC)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: empty dataset"):
        load_dataset(f"fashion-mnist:{d}", "test")


def test_bad_spec_and_split() -> None:
    with pytest.raises(DataError, match=r"split: must be 'train' or 'test', got 'val'"):
        load_dataset("fashion-mnist", "val")
    with pytest.raises(DataError, match=r"empty PATH after ':'"):
        load_dataset("fashion-mnist:", "train")
    with pytest.raises(BitnasError, match=r"unknown dataset 'fashion-mnst' \(did you mean 'fashion-mnist'"):
        load_dataset("fashion-mnst", "train")
    with pytest.raises(DataError, match=r"image_size: only imagefolder"):
        load_dataset("fashion-mnist-embedded", "train", image_size=32)


def test_registry_names() -> None:
    assert {"fashion-mnist", "fashion-mnist-embedded", "cifar10", "cifar100", "imagefolder"} <= set(
        datasets.DATASETS.names())


def test_error_messages_are_one_line(tmp_path: Path, fmnist_writer, caplog) -> None:
    caplog.set_level(logging.WARNING)
    d = tmp_path / "fm"
    fmnist_writer(d, gz=True)
    f = d / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(DataError) as info:
        load_dataset(f"fashion-mnist:{d}", "train")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,mean,classes", [
    ("mnist", (0.1307,), tuple("0123456789")),
    ("kmnist", (0.1918,), ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
])
def test_mnist_and_kmnist_read_idx_by_their_own_name(isolated_search, fmnist_writer, name, mean, classes) -> None:
    """`mnist:DIR`, `kmnist:DIR` and the default locations (DIR/mnist, …) read the same IDX layout with
    their own statistics and class names."""
    written = fmnist_writer(isolated_search["env"] / name, gz=True, seed=3)
    for spec in (name, f"{name}:{isolated_search['env']}"):
        ds = load_dataset(spec, "test")
        assert np.array_equal(ds.images[:, 0].numpy(), written["t10k_images"])
        assert np.array_equal(ds.labels.numpy(), written["t10k_labels"])
        assert ds.name == name and ds.mean == mean and ds.classes == classes and ds.num_classes == 10


def test_mnist_not_found_names_where_it_looked(isolated_search) -> None:
    with pytest.raises(DataError, match=r"mnist: train-images-idx3-ubyte\[\.gz\] not found; looked in .*mnist:PATH"):
        load_dataset("mnist", "train")


def test_generic_idx_takes_classes_and_statistics_from_its_training_images(tmp_path: Path, idx_writer) -> None:
    """idx:DIR: classes 0..max training label, mean/std of the training pixels (computed here with numpy)."""
    rng = np.random.default_rng(5)
    train = rng.integers(0, 256, (12, 9, 7), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 9, 7), dtype=np.uint8)
    idx_writer(tmp_path / "train-images-idx3-ubyte", train, IMAGES_MAGIC)
    idx_writer(tmp_path / "train-labels-idx1-ubyte", np.arange(12) % 3, LABELS_MAGIC)
    idx_writer(tmp_path / "t10k-images-idx3-ubyte", test, IMAGES_MAGIC)
    idx_writer(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3]), LABELS_MAGIC)
    ds = load_dataset(f"idx:{tmp_path}", "train")
    assert ds.num_classes == 3 and ds.classes == ("0", "1", "2") and ds.images.shape == (12, 1, 9, 7)
    assert ds.mean == (round(float(train.mean() / 255), 4),)
    assert ds.std == (round(float((train / 255).std()), 4),)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 3 at index 3 is out of range"):
        load_dataset(f"idx:{tmp_path}", "test")  # a class the training images never had
    with pytest.raises(DataError, match=r"idx: a directory is required"):
        load_dataset("idx", "train")
