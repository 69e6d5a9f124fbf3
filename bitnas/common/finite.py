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


def check_step(loss: Tensor | float, norm: Tensor | float, where: str, lr: float, world_size: int = 1,
               later: int = 0) -> None:
    """Raise NonFiniteError when the gradient norm (or, single-process, the loss) is not finite.

    `norm` must be the same on every rank (taken after averaging); the rank's own loss is only
    trusted alone, since one rank raising while the others go on would hang the job. `later`:
    the check runs that many steps after the step it judges (`StepGuard`)."""
    n = float(norm)
    value = float(loss)
    if math.isfinite(n) and (world_size > 1 or math.isfinite(value)):
        return
    what = f"loss is {value}" if not math.isfinite(value) else f"gradient norm is {n}"
    when = ("stopped before applying the step" if not later else
            f"found {later} step(s) later, before any checkpoint was written")
    raise NonFiniteError(f"{where}: the {what} (learning rate {lr:g}); {when}, so no checkpoint holds a non-finite "
                         "weight. Lower the learning rate (or set grad_clip) and start again")


class StepGuard:
    """`check_step` of every training step, read by the host once per `check()` instead of once
    per step: the steps' loss and gradient norm stay on the device until then, so an accelerator
    never waits for the host in between. The caller checks before any checkpoint is written;
    with a check after every step (before the optimizer step) nothing non-finite is applied."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._pending: list[tuple[str, float, Tensor, Tensor]] = []

    def add(self, loss: Tensor, norm: Tensor, where: str, lr: float) -> None:
        """Keep one step's (detached) loss and gradient norm for the next `check()`."""
        self._pending.append((where, lr, loss.detach().float().reshape(()), norm.detach().float().reshape(())))

    def check(self) -> None:
        """Read every pending step at once; NonFiniteError for the first non-finite one."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([torch.stack([lo, no]) for _, _, lo, no in pending]).cpu().tolist()
        for i, ((where, lr, _, _), (lo, no)) in enumerate(zip(pending, values)):
            check_step(lo, no, where, lr, self.world_size, later=len(pending) - 1 - i)
