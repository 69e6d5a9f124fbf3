"""`torchrun --nproc_per_node=2 -m bitnas train` on CPU (gloo): rank 0 alone writes the run."""
from __future__ import annotations

import sys
from pathlib import Path

from bitnas.utils import load_checkpoint, read_jsonl

from train_helpers import TINY, TINY_KV, run_bitnas

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


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
