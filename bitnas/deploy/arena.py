"""Output buffers of an engine network's units, reused from one forward to the next.

At batch 64 a Bi-Real conv writes a 16 MB float activation; allocated afresh on every forward,
its first touch costs ~4,000 page faults, about a fifth of the forward's time on the machine of
issue 18 (22 ms of system time in a 110 ms forward). An arena keeps each unit's buffers per
calling thread and hands them back on the next forward with the same shapes, as ONNX Runtime's
and OpenVINO's memory pools do. The price is memory: every unit's output stays allocated between
forwards (their sum, instead of the live set of one moment).

Only buffers of at least MIN_BYTES are kept: a small one comes back from malloc's free lists
without page faults, and usually still in cache (the one just freed), while keeping every unit's
small buffers would spread a batch-1 forward over more memory than L2 holds (DARTS_V2 at batch 1
measured 1.4x slower with every buffer kept).

A slot is handed out once per forward (`begin` starts one): a unit that ran twice in one forward
gets a fresh buffer the second time, so a buffer never changes while something of the same
forward may still read it. Threads have their own buffers, so one network may serve several.
"""
from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import torch
from torch import Tensor


MIN_BYTES = 2 << 20  # about the L2 of one core: below it malloc's reuse is as fast and cache-warmer


class Arena:
    """Per-thread buffers by slot (any hashable the owning unit picks)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _state(self) -> Any:
        st = self._local
        if not hasattr(st, "bufs"):
            st.bufs, st.forward = {}, 0
        return st

    def begin(self) -> None:
        """A new forward on this thread: every slot may be handed out once more."""
        self._state().forward += 1

    def array(self, slot: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array of `shape` for `slot`: last forward's, when it fits."""
        if math.prod(shape) * np.dtype(dtype).itemsize < MIN_BYTES:  # the common case first: cheap tests
            return np.empty(shape, dtype)
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        st = self._state()
        held = st.bufs.get(slot)
        if held is not None and held[0] == st.forward:  # taken already in this forward
            return np.empty(shape, dtype)
        if held is None or held[1].shape != shape or held[1].dtype != dtype:
            held = (st.forward, np.empty(shape, dtype))
        st.bufs[slot] = (st.forward, held[1])
        return held[1]

    def act(self, slot: Any, n: int, c: int, h: int, w: int) -> tuple[Tensor, np.ndarray]:
        """A float activation for `slot`: (NCHW channels-last tensor, its NHWC numpy view)."""
        buf = self.array(slot, (n, h, w, c), np.float32)
        return torch.from_numpy(buf).permute(0, 3, 1, 2), buf
