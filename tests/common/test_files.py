"""Files a run writes: sealed checkpoints, atomic writes on a full disk, strict JSON, torn JSON lines."""
from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import stat
from pathlib import Path

import pytest
import torch

from bitnas.errors import BitnasError
from bitnas.run import RunDir
from bitnas.common.checkpoint import load_checkpoint, save_checkpoint
from bitnas.common.files import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl, truncate_jsonl

STATE = {"weights": torch.linspace(-1, 1, 40), "epoch": 3, "name": "run", "nested": {"lr": 0.1, "ids": [1, 2]}}


def test_checkpoint_is_a_plain_torch_file_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, STATE)
    plain = torch.load(path, weights_only=True)  # any torch (or zip) reader still reads it
    for ck in (plain, load_checkpoint(path)):
        assert torch.equal(ck["weights"], STATE["weights"]) and ck["nested"] == STATE["nested"]


def test_every_flipped_bit_is_detected(tmp_path: Path) -> None:
    """Any single flipped bit — in a tensor, a number, a name, the zip structure or the digest itself
    — is refused, never loaded silently (all bits of the last 100 bytes, 400 elsewhere)."""
    path = tmp_path / "ck.pt"
    save_checkpoint(path, STATE)
    data = path.read_bytes()
    n = len(data) * 8
    bits = list(range(n - 800, n)) + random.Random(0).sample(range(n - 800), 400)
    for bit in bits:
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(BitnasError, match="corrupt checkpoint|not a bitnas checkpoint"):
            load_checkpoint(path)


def test_checkpoint_written_without_a_digest_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save(STATE, path)  # as bitnas wrote checkpoints before they were sealed
    assert load_checkpoint(path)["epoch"] == 3


@pytest.mark.parametrize("content,needle", [
    (b"", "empty file (0 bytes)"),
    (b"not a zip at all", "not a bitnas checkpoint (UnpicklingError"),
])
def test_unreadable_checkpoints_are_one_line_errors(tmp_path: Path, content: bytes, needle: str) -> None:
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(BitnasError, match=re.escape(needle)):
        load_checkpoint(tmp_path / "x.pt")


def test_a_checkpoint_must_hold_a_dict(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save(torch.zeros(3), buf)
    (tmp_path / "t.pt").write_bytes(buf.getvalue())
    with pytest.raises(BitnasError, match="holds a Tensor, not a dict"):
        load_checkpoint(tmp_path / "t.pt")


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing: a one-line error naming the file, the old checkpoint intact, no temp file."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, STATE)
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(BitnasError, match=r"last.pt: cannot write \(No space left on device\); the previous "
                                          r"last.pt is unchanged"):
        save_checkpoint(path, {**STATE, "epoch": 4})
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_atomic_write_syncs_the_file_and_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert synced == ["file", "dir"]  # the data before the rename, the rename after it


def test_json_is_strict(tmp_path: Path) -> None:
    """NaN and ±Infinity are not JSON: written as null, so every JSON reader can read the files."""
    rec = {"loss": float("nan"), "best": float("-inf"), "ok": 1.5, "t": torch.tensor([float("inf"), 2.0])}
    atomic_write_json(tmp_path / "r.json", rec)
    append_jsonl(tmp_path / "m.jsonl", rec)
    for text in ((tmp_path / "r.json").read_text(), (tmp_path / "m.jsonl").read_text()):
        assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == \
            {"loss": None, "best": None, "ok": 1.5, "t": [None, 2.0]}


def test_torn_last_line_is_dropped_but_a_bad_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')  # a process killed while appending
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    truncate_jsonl(path, 5)  # resume: keeps what the checkpoint covers, drops the torn tail
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    path.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(BitnasError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        read_jsonl(path)


def test_opening_a_run_directory_removes_temp_files_of_killed_writes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.a1b2c3d4.tmp").write_bytes(b"half a checkpoint")
    (run / "notes.txt").write_text("mine")
    RunDir(run).detach_log_file()
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "plots", "run.log"]


def test_plot_reads_a_run_whose_metrics_end_in_a_torn_line(tmp_path: Path) -> None:
    from bitnas.plots import plot_run

    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"epoch": e, "train_loss": 2.0 / e, "train_top1": 10.0 * e, "lr": 0.1}) for e in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 3, "train_lo')
    assert plot_run(run)


@pytest.mark.parametrize("name,content,needle", [
    ("genotype.json", "{bad", "genotype.json: not valid JSON (Expecting property name"),
    ("genotype.json", "[1, 2]", "genotype.json: expected a JSON object"),
    ("cpnas_history.json", '{"removals": []}', "cpnas_history.json: not a CP-NAS history"),
    ("config.yaml", "a: [1", "config.yaml: not valid YAML"),
])
def test_plot_of_a_damaged_run_is_a_one_line_error(tmp_path: Path, name: str, content: str, needle: str) -> None:
    from bitnas.plots import plot_run

    (tmp_path / name).write_text(content)
    with pytest.raises(BitnasError, match=re.escape(needle)):
        plot_run(tmp_path)
