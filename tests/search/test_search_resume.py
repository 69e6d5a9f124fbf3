"""Search resume: a search stopped by SIGTERM resumes to the end of an uninterrupted one; a resume with
a changed config is refused. (Killed and signalled searches in subprocesses: tests/test_crash_resume.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bitnas.common import faults
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl

TIMES = ("seconds", "elapsed")


def assert_same_run(a: Path, b: Path, keys: tuple[str, ...]) -> None:
    ga, gb = (json.loads((d / "genotype.json").read_text()) for d in (a, b))
    for k in keys:
        assert ga[k] == gb[k], k
    ra, rb = ([{k: v for k, v in r.items() if k not in TIMES} for r in read_jsonl(d / "metrics.jsonl")] for d in (a, b))
    assert ra == rb
    sa, sb = (load_checkpoint(d / "last.pt")["strategy"] for d in (a, b))
    for name, t in sa["model"].items():
        assert torch.equal(t, sb["model"][name]), name


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
