"""`EpochSums`: an epoch's training metrics summed on the device, read by the host on demand.

Reading `float(loss)` or `int(correct)` after every step makes the host wait for an accelerator
at every step; these sums stay device tensors until the progress bar, a checkpoint or the end
of the epoch reads them. The arithmetic is the one the host did before, in float64 and in the
same order (a float32 loss widened to float64, times the batch size, added), so the metrics are
bitwise what they were.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class EpochSums:
    """Images seen (a host count: batch sizes are known), correct top-1, loss·n and each loss
    component·n of one epoch so far; `part`: the host form (`to_host`) of a stopped epoch."""

    def __init__(self, device: torch.device, part: dict[str, Any] | None = None) -> None:
        part = part or {"n_seen": 0, "n_correct": 0, "loss_sum": 0.0, "sums": {}}
        self.device = device
        self.n_seen = int(part["n_seen"])
        self.correct = torch.tensor(int(part["n_correct"]), dtype=torch.int64, device=device)
        self.loss = torch.tensor(float(part["loss_sum"]), dtype=torch.float64, device=device)
        self.parts = {k: torch.tensor(float(v), dtype=torch.float64, device=device) for k, v in part["sums"].items()}

    def add(self, loss: Tensor, logits: Tensor, y: Tensor, parts: dict[str, Tensor]) -> None:
        """Add one batch: its mean loss, logits, labels and mean loss components (no host read)."""
        b = int(y.shape[0])
        self.n_seen += b
        self.correct += logits.detach().argmax(1).eq(y).sum()
        self.loss += loss.detach().double() * b
        for k, v in parts.items():
            if k not in self.parts:
                self.parts[k] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.parts[k] += v.detach().double() * b

    def to_host(self) -> dict[str, Any]:
        """n_seen, n_correct, loss_sum and sums as Python numbers (one read of the device)."""
        keys = sorted(self.parts)
        values = torch.stack([self.loss, self.correct.double()] + [self.parts[k] for k in keys]).cpu().tolist()
        return {"n_seen": self.n_seen, "n_correct": int(values[1]), "loss_sum": values[0],
                "sums": dict(zip(keys, values[2:]))}
