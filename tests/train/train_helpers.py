"""Helpers of the training tests: tiny settings and `python -m bitnas` in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bitnas.common import faults

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# The tiny network and data every training test uses (seconds on 2 shared cores). argparse needs
# the KEY=VALUE overrides together at the end of a command line: append TINY_KV last.
TINY = ["--genotype", "DARTS_V2", "--data", "fashion-mnist-embedded", "--init-channels", "4", "--layers", "2",
        "--batch-size", "32"]
TINY_KV = ["progress=off", "test_subset=100", "threads=1"]


def run_bitnas(args: list[str], env: dict[str, str] | None = None, timeout: float = 120,
               launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """`python -m bitnas ARGS` (or LAUNCHER ARGS) in a subprocess with one CPU thread."""
    full_env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    full_env.update(env or {})
    cmd = (launcher or [PYTHON, "-m", "bitnas"]) + args
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
