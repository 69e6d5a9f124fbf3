"""Kill-and-resume: a search SIGKILLed mid-run and resumed ends bitwise equal to an uninterrupted one.

Test hooks (environment variables, read by the search code):
- BITNAS_TEST_KILL_AT_STEP=N: SIGKILL at global training step N (mid-epoch, differentiable/random).
- BITNAS_TEST_KILL_AT_UNIT=N: SIGKILL after unit N is computed, before it is logged/checkpointed
  (runner level, any strategy; used by the CP-NAS tests).
- BITNAS_TEST_ARCH_TRACE=1: chain a hash of α/β after every α step into the metrics (step-level check).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitnas.utils import load_checkpoint, read_jsonl

REPO = Path(__file__).resolve().parents[2]
TINY = ["--data", "fashion-mnist-embedded", "--train-subset", "64", "--batch-size", "16", "--init-channels", "4",
        "--layers", "2"]


def start(out: Path, args: list[str], **env: str) -> subprocess.Popen:
    """`python -m bitnas search` with `args` (flags first, then key=value overrides)."""
    flags = [a for a in args if a.startswith("--") or "=" not in a]
    overrides = [a for a in args if a not in flags]
    e = {k: v for k, v in os.environ.items() if not k.startswith("BITNAS_TEST_")}
    e.update(env, BITNAS_TEST_ARCH_TRACE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bitnas", "search", *flags, *TINY, "--out", str(out), *overrides, "progress=off",
           "threads=1"]
    return subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen) -> tuple[int, str]:
    out, _ = p.communicate(timeout=600)
    return p.returncode, out


def strip_times(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "elapsed")} for r in recs]


def assert_same_run(a: Path, b: Path, keys: tuple[str, ...]) -> None:
    ga, gb = (json.loads((d / "genotype.json").read_text()) for d in (a, b))
    for k in keys:
        assert ga[k] == gb[k], k
    assert strip_times(read_jsonl(a / "metrics.jsonl")) == strip_times(read_jsonl(b / "metrics.jsonl"))
    sa, sb = (load_checkpoint(d / "last.pt")["strategy"] for d in (a, b))
    for name, t in sa["model"].items():
        assert torch.equal(t, sb["model"][name]), name


CASES = {
    # strategy args, kill hook, units checkpointed when killed (2 steps per epoch: step 3 is mid epoch 2)
    "pcdarts": (["--strategy", "pcdarts", "--epochs", "2", "warmup_epochs=0"], {"BITNAS_TEST_KILL_AT_STEP": "3"}, 1),
}


def run_in_process(out: Path, args: list[str]) -> None:
    """The uninterrupted reference run, in this process (saves a process start on a 2-core machine)."""
    from bitnas.cli import main

    flags = [a for a in args if a.startswith("--") or "=" not in a]
    overrides = [a for a in args if a not in flags]
    saved = os.environ.get("BITNAS_TEST_ARCH_TRACE")
    os.environ["BITNAS_TEST_ARCH_TRACE"] = "1"
    threads = torch.get_num_threads()
    try:
        argv = ["search", *flags, *TINY, "--out", str(out), *overrides, "progress=off", "threads=1"]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop("BITNAS_TEST_ARCH_TRACE")
        else:
            os.environ["BITNAS_TEST_ARCH_TRACE"] = saved


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    """Killed runs (subprocesses) while the references run here; then every resume at once."""
    root = tmp_path_factory.mktemp("resume")
    killed = {name: start(root / f"{name}-killed", args, **hook) for name, (args, hook, _) in CASES.items()}
    for name, (args, _, _) in CASES.items():
        run_in_process(root / f"{name}-full", args)
    for name, p in killed.items():
        code, log = finish(p)
        assert code == -9, log
        assert load_checkpoint(root / f"{name}-killed" / "last.pt")["records"] == CASES[name][2]
    resumed = {name: start(root / f"{name}-killed", CASES[name][0] + ["--resume"]) for name in CASES}
    out = {}
    for name, p in resumed.items():
        code, log = finish(p)
        assert code == 0, log
        out[name] = (root / f"{name}-full", root / f"{name}-killed", log)
    return out


def test_differentiable_search_killed_mid_epoch_resumes_bitwise(runs: dict) -> None:
    full, killed, log = runs["pcdarts"]
    assert "resumed pcdarts search" in log and "after 1 units" in log
    assert_same_run(full, killed, ("genotype", "best_genotype", "alphas", "best_epoch", "images_processed", "units"))
    a, b = (load_checkpoint(d / "last.pt")["strategy"] for d in (full, killed))
    assert a["trace"] and a["trace"] == b["trace"] and a["epoch"] == 2
    for name in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"):
        assert a["model"][name].dtype == torch.float32 and torch.equal(a["model"][name], b["model"][name])


def test_random_search_resumes_from_a_unit_checkpoint(tmp_path: Path) -> None:
    """In process: the checkpoint after unit 2 (training epoch, first sample) restores everything."""
    from bitnas.search.config import SearchConfig
    from bitnas.search.runner import run_search

    common = dict(strategy="random", data="fashion-mnist-embedded", train_subset=64, batch_size=16, init_channels=4,
                  layers=2, epochs=1, random_samples=3, progress="off", threads=1)
    threads = torch.get_num_threads()
    try:
        full = run_search(SearchConfig(out=str(tmp_path / "full"), **common))
        part = run_search(SearchConfig(out=str(tmp_path / "part"), **{**common, "random_samples": 1}))
        assert part["units"] == 2
        # the same run continued to 3 samples: the checkpoint holds weights and generator states
        resumed = run_search(SearchConfig(out=str(tmp_path / "part"), **common), resume=True)
    finally:
        torch.set_num_threads(threads)
    assert resumed["samples"] == full["samples"] and resumed["genotype"] == full["genotype"]
    assert_same_run(tmp_path / "full", tmp_path / "part", ("genotype", "samples", "best_sample", "units"))
