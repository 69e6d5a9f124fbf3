"""SIGINT / SIGTERM as a request to stop at the next safe point, with a resumable checkpoint.

A long run (search, training, study) wraps its loop in `graceful_stop()`. The first SIGINT or
SIGTERM only records the request; the loop checks `StopRequest.requested` after each step,
writes its checkpoint and raises `Interrupted`, which the command line turns into one line on
stderr and the conventional exit code 128 + signal (130 for SIGINT, 143 for SIGTERM). A second
signal restores the default behaviour, so an impatient Ctrl-C still stops at once (the last
checkpoint stays valid: every write is atomic).

Under torchrun every rank must stop at the same step: the loops ask
`bitnas.common.distributed.any_rank(request.requested, info)`, one tiny all-reduce per step.

The study runner (or any long loop) reuses the pieces: `with graceful_stop() as stop:` around
the loop, `stop.requested` at its safe points, `raise stop.interrupted(how_to_resume)` after
its checkpoint; the command line prints the message and exits with `Interrupted.exit_code`.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from bitnas.errors import BitnasError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BitnasError):
    """The run stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopRequest:
    """Whether (and by which signal) a stop was requested; set by the handlers of `graceful_stop`."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def interrupted(self, what: str) -> Interrupted:
        """The exception to raise once the checkpoint is written; `what` says how to resume."""
        assert self.signum is not None
        return Interrupted(self.signum, f"stopped by {self.name}; {what}")


_current: StopRequest | None = None


def current() -> StopRequest:
    """The innermost active request (a never-set one outside `graceful_stop`)."""
    return _current if _current is not None else StopRequest()


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Within the block the first SIGINT/SIGTERM sets the returned request instead of killing the
    process. Nested uses share the outer request. Outside the main thread (where handlers cannot
    be installed) the request is simply never set."""
    global _current
    if _current is not None:
        yield _current
        return
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        req.signum = signum
        for s in SIGNALS:  # a second signal acts at once, as it would without us
            signal.signal(s, previous[s])

    for s in SIGNALS:
        previous[s] = signal.signal(s, handler)
    _current = req
    try:
        yield req
    finally:
        _current = None
        for s in SIGNALS:
            signal.signal(s, previous[s])
