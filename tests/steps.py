"""A few Adam steps of a network on seeded random images: the losses and weights two paths must share."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def adam_steps(net: nn.Module, steps: int = 3, batch: int = 16, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(stacked losses, detached copies of the parameters) after `steps` Adam steps (lr 5e-3)."""
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(batch, 1, 28, 28, generator=gen), torch.randint(10, (batch,), generator=gen)
        loss = F.cross_entropy(net(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach().clone() for p in net.parameters()]
