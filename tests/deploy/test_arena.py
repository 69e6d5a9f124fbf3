"""The engine network's arena: large buffers reused across forwards, never twice within one, per
thread; small ones always fresh."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from bitnas.deploy import arena as arena_module
from bitnas.deploy.arena import Arena


@pytest.fixture(autouse=True)
def keep_every_size(monkeypatch) -> None:
    """These tests use small arrays: keep them all (the size rule has its own test)."""
    monkeypatch.setattr(arena_module, "MIN_BYTES", 0)


def test_a_slot_gets_last_forwards_buffer_when_the_shape_fits() -> None:
    arena = Arena()
    arena.begin()
    a = arena.array("x", (2, 3), np.float32)
    arena.begin()
    assert arena.array("x", (2, 3), np.float32) is a
    arena.begin()
    b = arena.array("x", (2, 4), np.float32)
    assert b is not a and b.shape == (2, 4)
    arena.begin()
    assert arena.array("x", (2, 4), np.uint64).dtype == np.uint64


def test_a_slot_taken_twice_in_one_forward_gets_a_fresh_buffer() -> None:
    arena = Arena()
    arena.begin()
    a = arena.array("x", (5,), np.float32)
    a[:] = 1.0
    b = arena.array("x", (5,), np.float32)
    assert not np.shares_memory(a, b)
    b[:] = 2.0
    assert np.all(a == 1.0)
    arena.begin()
    assert arena.array("x", (5,), np.float32) is a  # the slot keeps the first one


def test_without_begin_every_call_is_fresh_after_the_first() -> None:
    arena = Arena()
    a = arena.array("x", (3,), np.float32)
    assert not np.shares_memory(arena.array("x", (3,), np.float32), a)


def test_threads_have_their_own_buffers() -> None:
    arena = Arena()
    arena.begin()
    mine = arena.array("x", (4,), np.float32)
    seen: list[np.ndarray] = []

    def other() -> None:
        arena.begin()
        seen.append(arena.array("x", (4,), np.float32))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert not np.shares_memory(seen[0], mine)


def test_act_is_a_channels_last_view_of_its_nhwc_buffer() -> None:
    arena = Arena()
    arena.begin()
    t, buf = arena.act("y", 2, 5, 3, 4)
    assert tuple(t.shape) == (2, 5, 3, 4) and buf.shape == (2, 3, 4, 5)
    buf[1, 2, 3, 4] = 7.0
    assert float(t[1, 4, 2, 3]) == 7.0


def test_buffers_below_the_size_floor_are_always_fresh(monkeypatch) -> None:
    monkeypatch.setattr(arena_module, "MIN_BYTES", 1024)
    arena = Arena()
    arena.begin()
    small, large = arena.array("s", (255,), np.float32), arena.array("l", (256,), np.float32)
    arena.begin()
    assert arena.array("s", (255,), np.float32) is not small
    assert arena.array("l", (256,), np.float32) is large
