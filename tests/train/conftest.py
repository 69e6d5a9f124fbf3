"""Fixtures of the training tests."""
from __future__ import annotations

import logging

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Undo what a training run changes process-wide: bitnas log handlers/level, torch threads."""
    log = logging.getLogger("bitnas")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    threads = torch.get_num_threads()
    yield
    for h in log.handlers:
        if h not in handlers:
            h.close()
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = propagate
    torch.set_num_threads(threads)

