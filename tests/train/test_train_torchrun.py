"""`torchrun --nproc_per_node=2 -m bitnas train` on CPU (gloo): rank 0 alone writes the run; a rank that
hangs or dies ends the job in bounded time."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import bitnas
from bitnas.common import faults
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl

from train_helpers import TINY, TINY_KV, run_bitnas

pytestmark = pytest.mark.slow  # minutes: `make test-quick` leaves it out

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# bitnas' own modules; a traceback line naming a file below it is one of ours. (The checkout folder
# is usually called `bitnas` too, and torchrun's own launcher traceback names .../bitnas/.venv/...)
PACKAGE_DIR = str(Path(bitnas.__file__).resolve().parent) + "/"


def own_traceback_lines(lines: list[str]) -> list[str]:
    """The `File "..."` lines of a Python traceback that point into bitnas' package."""
    frames = [line.split('File "', 1)[1] for line in lines if 'File "' in line]
    return [f for f in frames if str(Path(f.split('"', 1)[0]).resolve()).startswith(PACKAGE_DIR)]


def test_own_traceback_lines_tells_package_frames_from_the_checkout_folder() -> None:
    venv_frame = f'  File "{Path(PACKAGE_DIR).parent}/.venv/bin/torchrun", line 8, in <module>'
    own_frame = f'[rank0]:   File "{PACKAGE_DIR}train/trainer.py", line 3, in fit'
    assert own_traceback_lines([venv_frame, "bitnas: error: x"]) == []
    assert len(own_traceback_lines([venv_frame, own_frame])) == 1


def test_torchrun_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    launcher = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "bitnas"]
    p = run_bitnas(["train", *TINY, "--epochs", "1", "--train-subset", "128", "--out", str(out), *TINY_KV,
                    "method=cp", "cp_kernel_target=latent", "eval_every=0"], launcher=launcher, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    files = sorted(f.name for f in out.iterdir() if f.is_file())
    assert files == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "result.json", "run.log"]
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r.get("epoch") for r in recs] == [1, None] and recs[-1]["final"]
    assert recs[-1]["test_images"] == 100  # each test image counted once over both ranks
    ck = load_checkpoint(out / "last.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert not any(k.startswith("module.") for k in ck["model"])
    # every rank judges its share of the test split with rank 0's BatchNorm statistics (the network best.pt
    # holds): evaluating best.pt again, as a resume of the finished run does, gives the same figures
    again = run_bitnas(["train", *TINY, "--epochs", "1", "--train-subset", "128", "--out", str(out), "--resume",
                        *TINY_KV, "method=cp", "cp_kernel_target=latent", "eval_every=0"], launcher=launcher,
                       timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    final = read_jsonl(out / "metrics.jsonl")[-1]
    assert (final["test_loss"], final["test_top5"]) == (recs[-1]["test_loss"], recs[-1]["test_top5"])


@pytest.mark.parametrize("launch", ["torchrun", "nproc"])
@pytest.mark.parametrize("fault", ["freeze", "exit"])
def test_a_frozen_or_dead_rank_ends_the_job_with_one_error_line(tmp_path: Path, fault: str, launch: str) -> None:
    """Rank 1 hangs (or dies) after its first step: rank 0 stops within BITNAS_DIST_TIMEOUT (not gloo's 30 minutes)
    with one `bitnas: error:` line and no traceback of its own. Under torchrun, torchrun's launcher then prints its
    own traceback and failure table; under `bitnas train --nproc 2` the one line is all there is."""
    rule = {"at": "train.step", "index": 1, "rank": 1, "do": fault}
    env = {"BITNAS_DIST_TIMEOUT": "5", faults.ENV: json.dumps([rule])}
    args = ["train", *TINY, "--epochs", "1", "--train-subset", "128", "--out", str(tmp_path / "ddp"), *TINY_KV]
    t0 = time.monotonic()
    if launch == "torchrun":
        p = run_bitnas(args, launcher=[TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "bitnas"], env=env,
                       timeout=240)
    else:
        p = run_bitnas([*args[:1], "--nproc", "2", *args[1:]], env=env, timeout=240)
    seconds = time.monotonic() - t0
    out = (p.stdout + p.stderr).splitlines()
    errors = [line for line in out if "bitnas: error:" in line]
    assert p.returncode == 1
    assert len(errors) == 1 and errors[0].startswith("bitnas: error: rank 0: lost contact"), "\n".join(out[-40:])
    assert not own_traceback_lines(out), "\n".join(out[-40:])
    if launch == "nproc":  # nothing but the run's own lines: no launcher traceback, no agent log, no failure table
        launcher_says = ("Traceback", "ChildFailedError", "Root Cause", "torch/distributed", "exitcode")
        assert not [line for line in out if any(m in line for m in launcher_says)], p.stderr[-3000:]
    if fault == "freeze":
        assert "within 5 s" in errors[0]
    assert seconds < 200  # job start, two steps, the 5 s wait and torchrun's shutdown


def test_nproc_launcher_stopped_by_a_signal_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    """SIGTERM to `bitnas train --nproc 2` (a scheduler's preemption): every rank checkpoints, one line, exit 143;
    --resume then ends with the figures of an uninterrupted run."""
    args = [*TINY, "--epochs", "1", "--train-subset", "512", *TINY_KV]
    rule = {"at": "train.step", "index": 2, "rank": 0, "do": "signal", "signal": "SIGTERM", "to": "parent"}
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    p = run_bitnas(["train", "--nproc", "2", "--out", str(stopped), *args], env={faults.ENV: json.dumps([rule])},
                   timeout=240)
    assert p.returncode == 143, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith("bitnas: stopped by SIGTERM"), p.stderr[-3000:]
    assert not (stopped / "result.json").exists()
    assert run_bitnas(["train", "--nproc", "2", "--out", str(stopped), "--resume", *args], timeout=240).returncode == 0
    assert run_bitnas(["train", "--nproc", "2", "--out", str(whole), *args], timeout=240).returncode == 0
    a, b = read_jsonl(stopped / "metrics.jsonl")[-1], read_jsonl(whole / "metrics.jsonl")[-1]
    assert (a["test_loss"], a["val_top1"]) == (b["test_loss"], b["val_top1"])


def test_nproc_is_refused_inside_a_torchrun_rank() -> None:
    p = run_bitnas(["train", "--nproc", "2", *TINY, *TINY_KV], env={"LOCAL_RANK": "0"})
    assert p.returncode == 2 and p.stderr.strip() == (
        "bitnas: error: --nproc: this process is already a rank of a torchrun job; drop --nproc or torchrun")


def test_strip_nproc() -> None:
    from bitnas.common.launch import strip_nproc

    assert strip_nproc(["train", "--nproc", "2", "--epochs", "1", "--nproc=3", "lr=1"]) == [
        "train", "--epochs", "1", "lr=1"]
