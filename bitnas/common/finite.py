"""Stop a run whose loss or gradients turned NaN or infinite, with an error that says what to change.

Training on a non-finite loss only spreads NaN through every weight; the run stops before the
step is applied, so the last checkpoint holds the last finite state. The gradient norm is taken
after the gradients are averaged over ranks, so under torchrun every rank sees the same value
and stops at the same step; the rank's own loss is checked only in a single process.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from bitnas.errors import BitnasError


class NonFiniteError(BitnasError):
    """The loss or the gradients of a training step are NaN or infinite."""


def grad_norm(params: Iterable[Tensor]) -> Tensor:
    """The 2-norm of all gradients (those that exist)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))


def check_step(loss: Tensor | float, norm: Tensor | float, where: str, lr: float, world_size: int = 1) -> None:
    """Raise NonFiniteError when the gradient norm (or, single-process, the loss) is not finite.

    `norm` must be the same on every rank (taken after averaging); the rank's own loss is only
    trusted alone, since one rank raising while the others go on would hang the job."""
    n = float(norm)
    value = float(loss)
    if math.isfinite(n) and (world_size > 1 or math.isfinite(value)):
        return
    what = f"loss is {value}" if not math.isfinite(value) else f"gradient norm is {n}"
    raise NonFiniteError(f"{where}: the {what} (learning rate {lr:g}); stopped before applying the step, so no "
                         "checkpoint holds a non-finite weight. Lower the learning rate (or set grad_clip) and start "
                         "again")
