"""Two "nodes" on this machine: two `torchrun --nnodes 2` launchers, one process each, meeting at one c10d
rendezvous on 127.0.0.1 (gloo). `bitnas train` and a differentiable search finish, write their metrics once
(rank 0), and both ranks end with bitwise identical weights (and α)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitnas.common import faults
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl

pytestmark = pytest.mark.slow  # two launchers and a rendezvous: tens of seconds

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(args: list[str], dump: Path, end_point: str, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2 --node-rank i ... -m bitnas ARGS` for i = 0, 1 at once; each rank dumps its final
    state at fault point `end_point` into `dump`."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    env.update({faults.ENV: json.dumps([{"at": end_point, "do": "dump", "dir": str(dump)}]), "OMP_NUM_THREADS": "1",
                "PYTHONDONTWRITEBYTECODE": "1"})
    procs = []
    for node in (0, 1):
        cmd = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "bitnas-two-nodes", "--rdzv-conf",
               f"is_host={1 if node == 0 else 0}", "--local-addr", "127.0.0.1", "--max-restarts", "0",
               "-m", "bitnas", *args]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def _same_parameters(dump: Path, point: str, key: str) -> None:
    """The two ranks' dumped parameters are bitwise equal (BN statistics are rank 0's when saved, not compared)."""
    a, b = (load_checkpoint(dump / f"{point}_rank{r}.pt") for r in (0, 1))
    ma, mb = a[key] if key == "model" else a[key]["model"], b[key] if key == "model" else b[key]["model"]
    compared = [n for n in ma if "running_" not in n and "num_batches_tracked" not in n]
    assert compared and all(torch.equal(ma[n], mb[n]) for n in compared)


def test_train_on_two_nodes(tmp_path: Path) -> None:
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    args = ["train", "--genotype", "DARTS_V2", "--data", "fashion-mnist-embedded", "--init-channels", "4",
            "--layers", "2", "--batch-size", "32", "--epochs", "1", "--train-subset", "128", "--out", str(out),
            "progress=off", "test_subset=100", "threads=1", "eval_every=0"]
    for p in run_two_nodes(args, dump, "train.end"):
        assert p.returncode == 0, p.stderr[-3000:]
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r.get("epoch") for r in recs] == [1, None] and recs[-1]["final"]
    assert recs[-1]["test_images"] == 100  # each test image counted once over both nodes
    ck = load_checkpoint(out / "last.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    _same_parameters(dump, "train.end", "model")


def test_search_on_two_nodes(tmp_path: Path) -> None:
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    args = ["search", "--strategy", "pcdarts", "--data", "fashion-mnist-embedded", "--train-subset", "64",
            "--batch-size", "8", "--epochs", "1", "--init-channels", "4", "--layers", "2", "--out", str(out),
            "warmup_epochs=0", "progress=off", "threads=1"]
    for p in run_two_nodes(args, dump, "search.end"):
        assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((out / "genotype.json").read_text())
    assert result["world_size"] == 2
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [0]
    _same_parameters(dump, "search.end", "strategy")
    ranks = [load_checkpoint(dump / f"search.end_rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["result"]["genotype"] == ranks[1]["result"]["genotype"] == result["genotype"]
