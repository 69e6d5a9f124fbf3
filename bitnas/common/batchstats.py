"""Evaluation with BatchNorm normalising by each batch's own statistics (weight-sharing supernets).

The running statistics of a supernet mix every path it has trained; an architecture scored on
them is judged on statistics that are not its own. Under `batch_statistics` every BatchNorm
layer normalises by the batch it sees and leaves its running statistics untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@contextmanager
def batch_statistics(model: nn.Module, layers: Sequence[_BatchNorm] | None = None) -> Iterator[None]:
    """no_grad, train mode, and BatchNorm `layers` (default: all of `model`'s) on batch statistics
    without updating their running statistics; everything is restored on exit."""
    bns = batchnorm_layers(model) if layers is None else list(layers)
    tracked = [m.track_running_stats for m in bns]
    was_training = model.training
    model.train()
    for m in bns:
        m.track_running_stats = False
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in zip(bns, tracked):
            m.track_running_stats = t
        model.train(was_training)


@contextmanager
def running_statistics(model: nn.Module) -> Iterator[None]:
    """no_grad and eval mode (BatchNorm on its running statistics); the mode is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
