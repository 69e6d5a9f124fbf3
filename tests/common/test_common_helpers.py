"""Helpers of bitnas/common: learning-rate schedules against closed forms, edge ranking, signal
handling, fault rules, the one-line error of a lost rank."""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from bitnas.common import faults, signals
from bitnas.common.distributed import is_lost_rank, lost_rank_error
from bitnas.space.edges import rank_edges
from bitnas.common.schedules import LRSchedule, cosine_lr, linear_lr


@pytest.mark.parametrize("step,total,expected", [
    (0, 8, 0.1), (8, 8, 0.001), (20, 8, 0.001), (4, 8, 0.001 + 0.099 * 0.5), (2, 8, 0.001 + 0.099 * (2 + 2 ** 0.5) / 4),
])
def test_cosine_lr_closed_form(step: int, total: int, expected: float) -> None:
    """lr_min + (lr − lr_min)(1 + cos(π t/T))/2: cos(π/4) = √2/2 at a quarter, 0 at half."""
    assert cosine_lr(step, total, 0.1, 0.001) == pytest.approx(expected, rel=1e-12)


def test_schedules_per_step() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    lin = LRSchedule(opt, "linear", 1.0, 0.0, 4)
    seen = []
    for _ in range(6):
        seen.append(lin.apply())
        lin.step()
    assert seen == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0] and opt.param_groups[0]["lr"] == 0.0
    assert linear_lr(1, 4, 1.0, 0.0) == 0.75 and cosine_lr(3, 0, 0.5, 0.0) == 0.5  # no steps: constant
    const = LRSchedule(opt, "constant", 0.3, 0.0, 4)
    const.load_state_dict({"step": 3})
    assert const.apply() == 0.3
    with pytest.raises(ValueError, match="schedule 'step' unknown"):
        LRSchedule(opt, "step", 1.0, 0.0, 4)


def test_rank_edges_orders_each_nodes_inputs_by_their_best_non_zero_op() -> None:
    ops = ("none", "a", "b")
    # node 0: inputs 0, 1; node 1: inputs 0, 1, 2. The zero op (col 0) never counts, even when largest.
    scores = torch.tensor([[9.0, 0.1, 0.2], [0.0, 0.5, 0.4], [0.0, 0.3, 0.3], [5.0, 0.1, 0.0], [0.0, 0.2, 0.9]])
    nodes = rank_edges(scores, ops, 2, "none")
    assert [(e.input, e.op) for e in nodes[0]] == [(1, 1), (0, 2)]
    assert [(e.input, e.op) for e in nodes[1]] == [(2, 2), (0, 1), (1, 1)]  # tie a/b on input 0: a (listed first)
    assert nodes[1][0].strength == pytest.approx(0.9)
    with pytest.raises(ValueError, match="no op besides the zero op"):
        rank_edges(scores[:, :1], ("none",), 2, "none")


def _signal_main_thread(signum: int) -> None:
    """Deliver `signum` to this (main) thread and give its Python handler a bytecode boundary to
    run at: a process-directed os.kill may land on one of torch's worker threads instead, and the
    handler then runs at some later point."""
    signal.pthread_kill(threading.main_thread().ident, signum)
    time.sleep(0.05)


def test_first_signal_is_a_request_second_acts_at_once() -> None:
    seen: list[int] = []

    def outer(signum: int, frame: object) -> None:  # the handler in place before graceful_stop
        seen.append(signum)

    before = signal.signal(signal.SIGINT, outer)
    try:
        with signals.graceful_stop() as stop:
            assert signals.current() is stop and not stop.requested
            _signal_main_thread(signal.SIGINT)
            assert stop.requested and stop.name == "SIGINT" and seen == []
            err = stop.interrupted("resume later")
            assert err.exit_code == 130 and str(err) == "stopped by SIGINT; resume later"
            _signal_main_thread(signal.SIGINT)  # the handler from before is back: it acts at once
            assert seen == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is outer
        assert not signals.current().requested
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigterm_exit_code_is_143() -> None:
    with signals.graceful_stop() as stop:
        _signal_main_thread(signal.SIGTERM)
        assert stop.interrupted("x").exit_code == 143


def test_fault_rules_match_point_index_and_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = [{"at": "search.arch_step", "do": "trace", "dir": str(tmp_path)},
             {"at": "train.step", "index": 5, "rank": 1, "do": "kill"}]
    monkeypatch.setenv(faults.ENV, json.dumps(rules))
    monkeypatch.setenv("RANK", "0")
    t = torch.arange(4.0)
    faults.point("search.arch_step", 1, tensors=[t])
    faults.point("search.arch_step", 1, tensors=lambda: [t])  # redone after a resume: the same digest
    faults.point("train.step", 5)  # rank 1's rule: rank 0 goes on
    trace = faults.read_trace(tmp_path / "trace_rank0.jsonl")
    assert trace == {1: faults.tensor_digest([t])}
    faults.point("search.arch_step", 2, tensors=[t + 1])
    assert faults.read_trace(tmp_path / "trace_rank0.jsonl")[2] != trace[1]
    monkeypatch.setenv(faults.ENV, '[{"at": "x", "do": "explode"}]')
    with pytest.raises(ValueError, match="expected a JSON list"):
        faults.point("x", 1)


def test_a_lost_rank_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    gloo = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation\n"
                        "more detail")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("BITNAS_DIST_TIMEOUT", "5")
    assert is_lost_rank(gloo) and not is_lost_rank(ValueError("timed out"))
    line = str(lost_rank_error(gloo))
    assert line.startswith("rank 1: lost contact") and "within 5 s" in line and "\n" not in line
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not is_lost_rank(gloo)  # a single process has no ranks to lose


def test_cosine_matches_torch_cosine_annealing() -> None:
    """An independent computation: torch's CosineAnnealingLR in closed form (epoch-level)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.025)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001)
    for step in range(10):
        assert cosine_lr(step, 10, 0.025, 0.001) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        ref.step()
    assert math.isclose(cosine_lr(10, 10, 0.025, 0.001), 0.001)
