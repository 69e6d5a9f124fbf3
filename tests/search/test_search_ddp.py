"""Two-process search under torchrun (gloo, CPU): both ranks hold bitwise identical α at every step.

Fault rules (`bitnas.common.faults`): every rank traces a hash of α/β after every α step and dumps
its final strategy state to DIR/search.end_rank<r>.pt.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch

from bitnas.common import faults
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # tens of seconds: a run killed and resumed, a study, or two ranks
def test_two_ranks_hold_identical_alpha_and_genotype(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    env.update({faults.ENV: json.dumps([{"at": "search.arch_step", "do": "trace", "dir": str(dump)},
                                        {"at": "search.end", "do": "dump", "dir": str(dump)}])}, OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "bitnas", "search", "--strategy", "pcdarts",
           "--data", "fashion-mnist-embedded", "--train-subset", "64", "--batch-size", "8", "--epochs", "2",
           "--init-channels", "4", "--layers", "2", "--out", str(out), "warmup_epochs=0", "progress=off", "threads=1"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads((out / "genotype.json").read_text())
    assert result["world_size"] == 2
    # 32 training images, 16 per rank in 2 batches of 8: 2 α steps and 2 weight steps per epoch
    assert result["images_processed"] == 2 * (32 + 32 + 32)
    ranks = [load_checkpoint(dump / f"search.end_rank{r}.pt") for r in (0, 1)]
    a, b = (r["strategy"] for r in ranks)
    ta, tb = (faults.read_trace(dump / f"trace_rank{r}.jsonl") for r in (0, 1))
    assert sorted(ta) == [1, 2, 3, 4] and ta == tb  # α/β identical after every α step
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name  # weights, α/β and (broadcast) BN statistics
    assert ranks[0]["result"]["genotype"] == ranks[1]["result"]["genotype"] == result["genotype"]
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1]
