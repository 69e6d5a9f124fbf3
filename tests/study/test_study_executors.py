"""Executors stop their trials gracefully: SIGTERM reaches the trial (it checkpoints), nothing outlives a stop."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from bitnas.study.executors import Job, LocalExecutor

TRIAL = """
import os, signal, sys, time
open("pid", "w").write(str(os.getpid()))
def stop(*_):
    print("checkpointed", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
for _ in range(1200):
    time.sleep(0.1)
"""


def _job(tmp_path: Path) -> Job:
    return Job("t/s0/train", (sys.executable, "-c", TRIAL), str(tmp_path), str(tmp_path / "trial.log"))


def _started(tmp_path: Path, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (tmp_path / "pid").is_file() and (tmp_path / "pid").read_text():
            return int((tmp_path / "pid").read_text())
        time.sleep(0.1)
    raise AssertionError("the trial never started")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_local_stop_lets_the_trial_checkpoint(tmp_path: Path) -> None:
    ex = LocalExecutor(1)
    ex.submit(_job(tmp_path))
    pid = _started(tmp_path)
    ex.stop(signal.SIGTERM, grace=30)
    assert "checkpointed" in (tmp_path / "trial.log").read_text() and not _alive(pid) and ex.free() == 1


@pytest.mark.slow
def test_ray_stop_lets_the_trial_checkpoint_and_leaves_no_orphan(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from bitnas.study.executors import RayExecutor

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        ex = RayExecutor(1)
        ex.submit(_job(tmp_path))
        pid = _started(tmp_path)
        t0 = time.monotonic()
        ex.stop(signal.SIGTERM, grace=30)
        assert time.monotonic() - t0 < 30
        assert "checkpointed" in (tmp_path / "trial.log").read_text()
        assert not _alive(pid) and ex.free() == 1
    finally:
        ray.shutdown()
