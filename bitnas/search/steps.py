"""The loop pieces every search strategy shares: weight optimizer and step, metric sums, evaluation.

`weight_step` averages gradients over ranks before clipping and stepping, so the weights stay
bitwise identical on every rank (its forward and loss run under `amp`, `bitnas.common.amp`);
`Meter` sums on the device, read by the host and summed over ranks on demand.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bitnas.common.amp import autocast
from bitnas.common.finite import check_step, grad_norm
from bitnas.search.strategy import SearchContext
from bitnas.search.supernet import SuperNetwork


def make_weight_optimizer(cfg: Any, params: list[Tensor]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam over the supernet weights (multi-tensor `foreach`
    kernels on every device: bitwise the single-tensor result, less per-tensor overhead)."""
    if cfg.w_optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.w_lr, weight_decay=cfg.w_weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay,
                           foreach=True)


def weight_step(ctx: SearchContext, model: SuperNetwork, optimizer: torch.optim.Optimizer, params: list[Tensor],
                x: Tensor, y: Tensor, grad_clip: float,
                paths: dict[str, list[int]] | None = None, what: str = "search") -> tuple[Tensor, Tensor]:
    """Forward, backward (weights only), rank-average, clip and step; returns (loss, logits) detached.

    A NaN or infinite loss or gradient stops the search (NonFiniteError) before the step is applied."""
    with autocast(ctx.cfg.amp, ctx.device):
        logits = model(x, paths=paths)[0] if paths is not None else model(x)[0]
        loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g
    ctx.sync_grads(params)
    with_grad = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(with_grad, grad_clip) if grad_clip > 0 else grad_norm(with_grad)
    check_step(loss.detach(), norm, f"{what}: weight step", optimizer.param_groups[0]["lr"], ctx.world_size)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), logits.detach()


class Meter:
    """Sums of loss·n, correct and n, reduced over ranks on demand.

    `add` reads nothing on the host (an accelerator never waits for it): loss·n and correct are
    summed in a float64 device tensor that starts from the host sums, in the host's order and
    arithmetic, so the figures are bitwise those of host sums; `state_dict` and `result` read it."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.correct = 0.0
        self.n = 0.0
        self._sums: Tensor | None = None  # [loss·n, correct] on the device since the last read

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        n = y.shape[0]
        if self._sums is None:
            self._sums = torch.tensor([self.loss, self.correct], dtype=torch.float64, device=loss.device)
        self._sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double()])
        self.n += n

    def _read(self) -> None:
        if self._sums is not None:
            self.loss, self.correct = self._sums.tolist()
            self._sums = None

    def state_dict(self) -> dict[str, float]:
        self._read()
        return {"loss": self.loss, "correct": self.correct, "n": self.n}

    @classmethod
    def from_state(cls, state: dict[str, float]) -> "Meter":
        m = cls()
        m.loss, m.correct, m.n = float(state["loss"]), float(state["correct"]), float(state["n"])
        return m

    def result(self, ctx: SearchContext) -> tuple[float, float]:
        """(mean loss, accuracy in %) over all ranks."""
        self._read()
        loss, correct, n = ctx.reduce_sums([self.loss, self.correct, self.n])
        return (loss / n, 100.0 * correct / n) if n else (float("nan"), float("nan"))


@torch.no_grad()
def evaluate(ctx: SearchContext, model: SuperNetwork, loader: Any, paths: Any = None) -> tuple[float, float]:
    """(loss, accuracy %) over a loader's full epoch, eval-mode BN; `paths(i)` gives a per-batch path."""
    was_training = model.training
    model.eval()
    m = Meter()
    for i, (x, y) in enumerate(loader.iter_from(0)):
        x, y = x.to(ctx.device), y.to(ctx.device)
        logits = model(x, paths=paths(i))[0] if paths is not None else model(x)[0]
        m.add(F.cross_entropy(logits, y), logits, y)
    model.train(was_training)
    return m.result(ctx)
