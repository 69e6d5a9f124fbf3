"""Kill-and-resume: a search SIGKILLed mid-run and resumed ends bitwise equal to an uninterrupted one.

Fault rules (`bitnas.common.faults`): SIGKILL at a weight step (mid-epoch), and a trace of α/β
after every α step in both runs (step-level check, redone steps included).
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
from bitnas.utils import load_checkpoint, read_jsonl

REPO = Path(__file__).resolve().parents[2]
TINY = ["--data", "fashion-mnist-embedded", "--train-subset", "64", "--batch-size", "16", "--init-channels", "4",
        "--layers", "2"]


def trace_rule(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return {"at": "search.arch_step", "do": "trace", "dir": str(out)}


def start(out: Path, args: list[str], rules: list[dict] = ()) -> subprocess.Popen:
    """`python -m bitnas search` with `args` (flags first, then key=value overrides), α traced into
    `out`.trace/."""
    flags = [a for a in args if a.startswith("--") or "=" not in a]
    overrides = [a for a in args if a not in flags]
    e = {k: v for k, v in os.environ.items() if k != faults.ENV}
    e.update({faults.ENV: json.dumps([trace_rule(trace_dir(out)), *rules])}, OMP_NUM_THREADS="1")
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


def trace_dir(run: Path) -> Path:
    return run.with_name(run.name + ".trace")


CASES = {
    # strategy args, fault rules, units checkpointed when killed (2 steps per epoch: step 3 is mid epoch 2)
    "pcdarts": (["--strategy", "pcdarts", "--epochs", "2", "warmup_epochs=0"],
                [{"at": "search.step", "index": 3, "do": "kill"}], 1),
}


def run_in_process(out: Path, args: list[str]) -> None:
    """The uninterrupted reference run, in this process (saves a process start on a 2-core machine)."""
    from bitnas.cli import main

    flags = [a for a in args if a.startswith("--") or "=" not in a]
    overrides = [a for a in args if a not in flags]
    saved = os.environ.get(faults.ENV)
    os.environ[faults.ENV] = json.dumps([trace_rule(trace_dir(out))])
    threads = torch.get_num_threads()
    try:
        argv = ["search", *flags, *TINY, "--out", str(out), *overrides, "progress=off", "threads=1"]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop(faults.ENV)
        else:
            os.environ[faults.ENV] = saved


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    """Killed runs (subprocesses) while the references run here; then every resume at once."""
    root = tmp_path_factory.mktemp("resume")
    killed = {name: start(root / f"{name}-killed", args, rules) for name, (args, rules, _) in CASES.items()}
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
    ta, tb = (faults.read_trace(trace_dir(d) / "trace_rank0.jsonl") for d in (full, killed))
    assert sorted(ta) == [1, 2, 3, 4] and ta == tb and a["epoch"] == 2
    for name in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"):
        assert a["model"][name].dtype == torch.float32 and torch.equal(a["model"][name], b["model"][name])


def test_random_search_stopped_by_sigterm_resumes_from_its_checkpoint(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: SIGTERM after unit 2 (training epoch, first sample) stops the search with a checkpoint
    (`Interrupted`, exit code 143); the resumed search ends where an uninterrupted one ends."""
    from bitnas.common.signals import Interrupted
    from bitnas.search.config import SearchConfig
    from bitnas.search.runner import run_search

    common = dict(strategy="random", data="fashion-mnist-embedded", train_subset=64, batch_size=16, init_channels=4,
                  layers=2, epochs=1, random_samples=3, progress="off", threads=1)
    threads = torch.get_num_threads()
    try:
        full = run_search(SearchConfig(out=str(tmp_path / "full"), **common))
        monkeypatch.setenv(faults.ENV, json.dumps([{"at": "search.unit", "index": 2, "do": "signal",
                                                    "signal": "SIGTERM"}]))
        with pytest.raises(Interrupted) as stopped:
            run_search(SearchConfig(out=str(tmp_path / "part"), **common))
        monkeypatch.delenv(faults.ENV)
        assert stopped.value.exit_code == 143 and "SIGTERM" in str(stopped.value)
        assert load_checkpoint(tmp_path / "part" / "last.pt")["records"] == 2
        assert not (tmp_path / "part" / "genotype.json").exists()
        resumed = run_search(SearchConfig(out=str(tmp_path / "part"), **common), resume=True)
    finally:
        torch.set_num_threads(threads)
    assert resumed["samples"] == full["samples"] and resumed["genotype"] == full["genotype"]
    assert_same_run(tmp_path / "full", tmp_path / "part", ("genotype", "samples", "best_sample", "units"))


def test_search_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    """A search resumes only with the config it was started with (as training does)."""
    from bitnas.errors import ConfigError
    from bitnas.search.config import SearchConfig
    from bitnas.search.runner import run_search

    common = dict(strategy="random", data="fashion-mnist-embedded", train_subset=64, batch_size=16, init_channels=4,
                  layers=2, epochs=0, random_samples=2, progress="off", threads=1, out=str(tmp_path / "run"))
    threads = torch.get_num_threads()
    try:
        run_search(SearchConfig(**common))
        before = (tmp_path / "run" / "last.pt").read_bytes()
        with pytest.raises(ConfigError, match="resume needs the same config; changed: random_samples: 2 → 3"):
            run_search(SearchConfig(**{**common, "random_samples": 3}), resume=True)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
