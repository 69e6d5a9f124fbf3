"""Fixtures of the training tests."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _restore_global_state(process_state) -> None:
    """Every training test: bitnas logging and torch threads restored afterwards (`process_state`)."""
