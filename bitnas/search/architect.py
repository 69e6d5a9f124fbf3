"""The architecture step of differentiable NAS (DARTS §4.2): α/β updated on validation batches.

First order: ∇α L_val(w, α). Second order (`unrolled`): one virtual SGD step of the weights,

    w' = w − ξ·(∇w L_train(w, α) + μ·buf + λ·w)          (ξ = current weight lr, μ momentum,
                                                           buf its buffer, λ weight decay)

then ∇α L_val(w', α) − ξ·[∇α L_train(w⁺, α) − ∇α L_train(w⁻, α)] / (2ε), with
w± = w ± ε·∇w' L_val(w', α) and ε = 0.01 / ‖∇w' L_val‖. Virtual weights are passed to the
network with `torch.func.functional_call`, so the real weights are never touched (nothing to
restore), and BatchNorm buffers are given as copies so the virtual passes leave them unchanged.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from bitnas.common.finite import check_step
from bitnas.errors import ConfigError
from bitnas.search.supernet import SuperNetwork

Batch = tuple[Tensor, Tensor]
Average = Callable[[list[Tensor]], None]


def _no_average(tensors: list[Tensor]) -> None:
    return None


class Architect:
    """Owns the Adam optimizer of α/β and computes their (first- or second-order) gradients.

    `average` averages a list of tensors in place over ranks (`SearchContext.average`); every
    gradient that enters an update is averaged, so all ranks hold identical α. `fd_scale` is the
    0.01 of ε = 0.01/‖∇w' L_val‖ (DARTS).
    """

    def __init__(self, model: SuperNetwork, lr: float, betas: tuple[float, float], weight_decay: float,
                 average: Average | None = None, fd_scale: float = 0.01, world_size: int = 1) -> None:
        self.model = model
        self.world_size = world_size
        self.fd_scale = fd_scale
        self.params = model.arch_parameters()
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.average = average or _no_average

    def _loss(self, batch: Batch, weights: dict[str, Tensor] | None = None,
              buffers: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x, y = batch
        if weights is None:
            logits = self.model(x)[0]
        else:
            logits = functional_call(self.model, {**weights, **(buffers or {})}, (x,))[0]
        return F.cross_entropy(logits, y), logits

    def gradients(self, train_batch: Batch, val_batch: Batch, lr: float, w_optimizer: torch.optim.Optimizer,
                  unrolled: bool) -> tuple[list[Tensor], Tensor, Tensor]:
        """(gradients of the arch parameters, validation loss, validation logits), averaged over ranks."""
        if not unrolled:
            loss, logits = self._loss(val_batch)
            grads = _grads(loss, self.params)
        else:
            grads, loss, logits = self._unrolled_gradients(train_batch, val_batch, lr, w_optimizer)
        self.average(grads)
        return grads, loss.detach(), logits.detach()

    def step(self, train_batch: Batch, val_batch: Batch, lr: float, w_optimizer: torch.optim.Optimizer,
             unrolled: bool) -> tuple[Tensor, Tensor]:
        """One Adam step of α/β; returns the validation loss and logits it was computed on."""
        grads, loss, logits = self.gradients(train_batch, val_batch, lr, w_optimizer, unrolled)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        check_step(loss, norm, "search: α step", self.optimizer.param_groups[0]["lr"], self.world_size)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, logits

    def _virtual_step(self, weights: list[Tensor], grads: list[Tensor], lr: float,
                      w_optimizer: torch.optim.Optimizer) -> list[Tensor]:
        """w − ξ(g + μ·buf + λ·w): exactly the next step of torch's SGD (no dampening/nesterov)."""
        if not isinstance(w_optimizer, torch.optim.SGD):
            raise ConfigError("unrolled (second-order) search needs w_optimizer: sgd")
        group = w_optimizer.param_groups[0]
        if group.get("nesterov") or group.get("dampening", 0.0):
            raise ConfigError("unrolled search: the virtual step assumes SGD without nesterov or dampening")
        momentum, wd = float(group["momentum"]), float(group["weight_decay"])
        out = []
        for w, g in zip(weights, grads):
            d = g + wd * w if wd else g.clone()
            buf = w_optimizer.state.get(w, {}).get("momentum_buffer") if momentum else None
            if buf is not None:
                d = d + momentum * buf
            out.append((w.detach() - lr * d).requires_grad_(True))
        return out

    def _unrolled_gradients(self, train_batch: Batch, val_batch: Batch, lr: float,
                            w_optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], Tensor, Tensor]:
        named = self.model.named_weight_parameters()
        names = [n for n, _ in named]
        weights = [p for _, p in named]
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        loss_t, _ = self._loss(train_batch, dict(zip(names, weights)), buffers)
        g_train = _grads(loss_t, weights)
        self.average(g_train)
        w_virtual = self._virtual_step(weights, g_train, lr, w_optimizer)
        loss_v, logits = self._loss(val_batch, dict(zip(names, w_virtual)), buffers)
        grads = _grads(loss_v, self.params + w_virtual)
        d_alpha, d_w = grads[:len(self.params)], grads[len(self.params):]
        self.average(d_w)
        eps = self.fd_scale / torch.cat([g.reshape(-1) for g in d_w]).norm()
        w_plus = [(w + eps * v).detach() for w, v in zip(weights, d_w)]
        w_minus = [(w - eps * v).detach() for w, v in zip(weights, d_w)]
        g_plus = _grads(self._loss(train_batch, dict(zip(names, w_plus)), buffers)[0], self.params)
        g_minus = _grads(self._loss(train_batch, dict(zip(names, w_minus)), buffers)[0], self.params)
        out = [da - lr * (gp - gn) / (2 * eps) for da, gp, gn in zip(d_alpha, g_plus, g_minus)]
        return out, loss_v, logits

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def _grads(loss: Tensor, params: list[Tensor]) -> list[Tensor]:
    """∂loss/∂params with zeros for parameters the loss does not reach."""
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]
