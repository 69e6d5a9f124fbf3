"""The step plumbing every loop shares (`bitnas.common.steps`): progress gate, counts, fault point,
stop request, resume state."""
from __future__ import annotations

import os
import signal

import pytest

from bitnas.common import faults, signals, steps
from bitnas.common.distributed import DistInfo
from bitnas.common.steps import Steps, show_progress


@pytest.mark.parametrize("terminal", [True, False])
@pytest.mark.parametrize("ci", ["", "true"])
def test_progress_gate(monkeypatch: pytest.MonkeyPatch, terminal: bool, ci: str) -> None:
    monkeypatch.setattr(steps.sys.stderr, "isatty", lambda: terminal, raising=False)
    monkeypatch.setenv("CI", ci)
    auto = terminal and not ci
    assert steps.progress_enabled() is auto
    assert show_progress("auto") is auto and show_progress("on") and not show_progress("off")
    assert not show_progress("on", is_main=False) and not show_progress("auto", is_main=False)
    items = [1, 2, 3]
    s = Steps("train.step", progress="off")
    assert s.bar(items, "x", 3) is items and s.counter(3, "x", "trial") is None


def test_done_counts_then_marks_the_fault_point(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int, int]] = []
    s = Steps("search.step")
    monkeypatch.setattr(faults, "point", lambda name, index, **kw: seen.append((name, index, s.images)))
    s.done(images=16)
    s.add_images(5)
    s.done(images=8)
    s.done()
    assert seen == [("search.step", 1, 16), ("search.step", 2, 29), ("search.step", 3, 29)]
    assert s.state_dict() == {"step": 3, "images": 29}
    t = Steps("search.step")
    t.load_state_dict(s.state_dict())
    assert (t.step, t.images) == (3, 29)


def test_stop_request_of_the_enclosing_graceful_stop() -> None:
    s = Steps("train.step", DistInfo())
    assert not s.stop_requested()  # outside graceful_stop: never set
    with signals.graceful_stop():
        assert not s.stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert s.stop_requested()
        e = s.interrupted("continue with --resume")
        assert e.exit_code == 143 and str(e) == "stopped by SIGTERM; continue with --resume"
    own = signals.StopRequest()
    t = Steps("study.trial", stop=own)
    assert not t.stop_requested()
    own.signum = signal.SIGINT
    assert t.stop_requested() and t.interrupted("rerun").exit_code == 130
