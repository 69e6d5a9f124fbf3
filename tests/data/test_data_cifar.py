"""CIFAR-10/100 python-pickle loading, restricted unpickling and error messages."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bitnas.data import load_dataset
from bitnas.errors import DataError


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("point_at", ["dir", "parent"])
def test_cifar_roundtrip(tmp_path: Path, cifar_writer, num_classes: int, point_at: str) -> None:
    d, written = cifar_writer(tmp_path, num_classes)
    path = d if point_at == "dir" else tmp_path
    name = f"cifar{num_classes}"
    for split in ("train", "test"):
        ds = load_dataset(f"{name}:{path}", split)
        data, labels = written[f"{split}_data"], written[f"{split}_labels"]
        assert ds.images.shape == (len(data), 3, 32, 32) and ds.images.dtype == torch.uint8
        assert np.array_equal(ds.images.reshape(len(data), -1).numpy(), data)
        assert np.array_equal(ds.labels.numpy(), labels) and ds.labels.dtype == torch.int64
        assert ds.num_classes == num_classes and ds.name == name
        assert len(ds.mean) == 3 and len(ds.std) == 3
        assert ds.source == str(d)
    assert len(load_dataset(f"{name}:{path}", "train")) == (30 if num_classes == 10 else 6)


def test_cifar_channel_layout(tmp_path: Path, cifar_writer) -> None:
    d, written = cifar_writer(tmp_path, 10)
    ds = load_dataset(f"cifar10:{d}", "test")
    row = written["test_data"][0]
    assert np.array_equal(ds.images[0, 0].numpy(), row[:1024].reshape(32, 32))
    assert np.array_equal(ds.images[0, 2].numpy(), row[2048:].reshape(32, 32))


def test_cifar_class_names_from_meta(tmp_path: Path, cifar_writer) -> None:
    d, _ = cifar_writer(tmp_path, 100)
    assert load_dataset(f"cifar100:{d}", "test").classes[:2] == ("f0", "f1")


def test_cifar_default_search(isolated_search, cifar_writer) -> None:
    d, _ = cifar_writer(isolated_search["env"], 10)
    assert load_dataset("cifar10", "test").source == str(d)


def test_cifar_not_found_says_where_it_looked(isolated_search) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar100", "train")
    msg = str(info.value)
    assert "cifar100: cifar-100-python/train not found; looked in" in msg
    assert str(isolated_search["env"] / "cifar-100-python") in msg
    assert "\n" not in msg


def test_cifar_missing_batch(tmp_path: Path, cifar_writer) -> None:
    d, _ = cifar_writer(tmp_path, 10)
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar10:.*: data_batch_3 not found in .*cifar-10-batches-py"):
        load_dataset(f"cifar10:{tmp_path}", "train")
    with pytest.raises(DataError, match=r"directory does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}", "train")


def test_malicious_pickle_refused(tmp_path: Path, cifar_writer) -> None:
    d, _ = cifar_writer(tmp_path, 10)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"test_batch: refusing to load pickle global '(posix|os|nt)\.system' "
                                        r"\(only numpy arrays are allowed\)"):
        load_dataset(f"cifar10:{d}", "test")
    assert not marker.exists()


def test_builtins_eval_refused(tmp_path: Path, cifar_writer) -> None:
    d, _ = cifar_writer(tmp_path, 100)
    payload = b"cbuiltins\neval\n(V1+1\ntR."
    (d / "test").write_bytes(payload)
    with pytest.raises(DataError, match=r"refusing to load pickle global 'builtins\.eval'"):
        load_dataset(f"cifar100:{d}", "test")


def test_newer_numpy_pickle_protocols_load(tmp_path: Path, cifar_writer) -> None:
    d, written = cifar_writer(tmp_path, 10)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": written["test_data"], b"labels": written["test_labels"].tolist()}, f, protocol=5)
    ds = load_dataset(f"cifar10:{d}", "test")
    assert np.array_equal(ds.images.reshape(len(ds), -1).numpy(), written["test_data"])


def test_numpy1_style_pickles_load(tmp_path: Path, cifar_writer) -> None:
    """The original files name numpy.core.multiarray._reconstruct (numpy 1.x, protocol 2)."""
    d, written = cifar_writer(tmp_path, 10)
    f = d / "test_batch"
    raw = f.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    f.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(f"cifar10:{d}", "test")
    assert np.array_equal(ds.labels.numpy(), written["test_labels"])


def test_cifar_label_out_of_range(tmp_path: Path, cifar_writer, pickle_writer) -> None:
    d, _ = cifar_writer(tmp_path, 10)
    pickle_writer(d / "test_batch", {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 10, 1]})
    with pytest.raises(DataError, match=r"test_batch: label 10 at index 1 is out of range \(expected 0\.\.9"):
        load_dataset(f"cifar10:{d}", "test")


def test_cifar100_uses_fine_labels(tmp_path: Path, cifar_writer, pickle_writer) -> None:
    d, _ = cifar_writer(tmp_path, 100)
    pickle_writer(d / "test", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"test: no b'fine_labels' entry"):
        load_dataset(f"cifar100:{d}", "test")
    pickle_writer(d / "test", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [99, 100]})
    with pytest.raises(DataError, match=r"label 100 at index 1 is out of range \(expected 0\.\.99"):
        load_dataset(f"cifar100:{d}", "test")


def test_cifar_count_mismatch(tmp_path: Path, cifar_writer, pickle_writer) -> None:
    d, _ = cifar_writer(tmp_path, 10)
    pickle_writer(d / "data_batch_2", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [1, 2, 3]})
    with pytest.raises(DataError, match=r"data_batch_2: 3 labels but 4 images"):
        load_dataset(f"cifar10:{d}", "train")


def test_cifar_bad_data_shape(tmp_path: Path, cifar_writer, pickle_writer) -> None:
    d, _ = cifar_writer(tmp_path, 10)
    pickle_writer(d / "test_batch", {b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]})
    with pytest.raises(DataError, match=r"test_batch: data must be uint8 N×3072"):
        load_dataset(f"cifar10:{d}", "test")


def test_cifar_truncated_pickle(tmp_path: Path, cifar_writer) -> None:
    d, _ = cifar_writer(tmp_path, 10)
    f = d / "data_batch_1"
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(DataError, match=r"data_batch_1: (truncated pickle file|not a valid pickle file)"):
        load_dataset(f"cifar10:{d}", "train")
