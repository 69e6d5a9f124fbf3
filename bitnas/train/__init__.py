"""Training fixed genotypes: 1-bit child, fp32 parent, CP-NAS kernel loss, distillation, two stages.

`train` (bitnas.train.job), `Trainer` (bitnas.train.trainer) and `evaluate_checkpoint`
(bitnas.train.evaluate) are imported on first use, so `bitnas eval` does not load the training loop.
"""
from __future__ import annotations

import importlib
from typing import Any

from bitnas.train.config import TrainConfig
from bitnas.train.losses import CenterLoss, KernelLoss, distillation_loss

_LAZY = {"train": "bitnas.train.job", "Trainer": "bitnas.train.trainer", "evaluate_checkpoint": "bitnas.train.evaluate"}

__all__ = ["CenterLoss", "KernelLoss", "TrainConfig", "Trainer", "distillation_loss", "evaluate_checkpoint", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bitnas.train' has no attribute {name!r}")
