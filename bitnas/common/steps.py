"""The plumbing every long loop shares, written once: progress bar gate, step and image counts,
the fault point after each step, and the stop request (SIGINT/SIGTERM → checkpoint → exit).

The trainer, every search strategy (CP-NAS included) and the study runner each hold one `Steps`:

    steps = Steps("train.step", info, progress=cfg.progress)
    for x, y in steps.bar(loader, desc, total):
        ...one optimizer step...
        steps.done(images=batch)          # count, then `faults.point("train.step", n)`
        if more_to_do and steps.stop_requested():
            ...write the checkpoint...
            raise steps.interrupted(how_to_resume)

`stop_requested()` is collective under torchrun (one tiny all-reduce): every rank calls it at the
same point of the same step, so all ranks stop together. `state_dict()` holds the counts that a
resumed run continues from.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

from bitnas.common import faults, signals
from bitnas.common.distributed import DistInfo, any_rank

def progress_enabled() -> bool:
    """tqdm only on a terminal and never in CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def show_progress(setting: str, is_main: bool = True) -> bool:
    """Whether to draw tqdm bars: on the main rank only; `on` always, `off` never, `auto` when
    `progress_enabled()`."""
    if not is_main or setting == "off":
        return False
    return setting == "on" or progress_enabled()


class Steps:
    """Counts the steps and images of one loop, marks each step as fault point `point`, gates its
    progress bars and answers whether a stop was requested on any rank.

    stop: the request to watch; by default the innermost `signals.graceful_stop()` at call time.
    """

    def __init__(self, point: str, info: DistInfo | None = None, progress: str = "auto",
                 stop: signals.StopRequest | None = None) -> None:
        self.point = point
        self.info = info or DistInfo()
        self.show = show_progress(progress, self.info.is_main)
        self._stop = stop
        self.step = 0
        self.images = 0

    # -- progress ------------------------------------------------------------------------
    def bar(self, iterable: Iterable[Any], desc: str, total: int) -> Iterable[Any]:
        """`iterable` wrapped in a transient tqdm bar when bars are shown, else unchanged."""
        if not self.show:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)

    def counter(self, total: int, desc: str, unit: str) -> Any:
        """A tqdm bar advanced by hand (`update(1)`), or None when bars are off or there is nothing to count."""
        if not self.show or total == 0:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    # -- counts and the fault point ------------------------------------------------------
    def add_images(self, n: int) -> None:
        """Count `n` images processed outside a step (evaluation, α steps)."""
        self.images += int(n)

    def done(self, images: int = 0) -> None:
        """One step finished on `images` images: count it, then mark fault point `point` number `step`."""
        self.images += int(images)
        self.step += 1
        faults.point(self.point, self.step)

    # -- the stop request ----------------------------------------------------------------
    @property
    def stop(self) -> signals.StopRequest:
        return self._stop if self._stop is not None else signals.current()

    def stop_requested(self) -> bool:
        """True on every rank when SIGINT/SIGTERM reached any (collective under torchrun)."""
        return any_rank(self.stop.requested, self.info)

    def interrupted(self, what: str) -> signals.Interrupted:
        """The exception to raise once the checkpoint is written; `what` says how to resume."""
        return self.stop.interrupted(what)

    # -- resume --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "images": self.images}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.images = int(state.get("images", 0))
