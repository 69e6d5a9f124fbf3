"""Learning-rate schedules, the one mechanism of every loop: per optimizer step in training and the
CP-NAS search, per epoch in the differentiable and random searches."""
from __future__ import annotations

import math
from typing import Any

import torch

KINDS = ("cosine", "linear", "constant")


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine from `lr` at step 0 to `lr_min` at step `total` (and after); `lr` when total ≤ 0."""
    if total <= 0:
        return lr
    t = min(step, total) / total
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))


def linear_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Straight line from `lr` at step 0 to `lr_min` at step `total` (and after)."""
    if total <= 0:
        return lr
    return lr + (lr_min - lr) * (min(step, total) / total)


class LRSchedule:
    """Per-step learning rate of an optimizer: cosine or linear from `lr` to `lr_min` over
    `total_steps`, or constant; `state_dict()` holds the step for exact resume."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, lr: float, lr_min: float, total_steps: int) -> None:
        if kind not in KINDS:
            raise ValueError(f"schedule '{kind}' unknown; known: {', '.join(KINDS)}")
        self.optimizer, self.kind, self.lr, self.lr_min = optimizer, kind, lr, lr_min
        self.total_steps = max(1, total_steps)
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        if self.kind == "cosine":
            return cosine_lr(step, self.total_steps, self.lr, self.lr_min)
        if self.kind == "linear":
            return linear_lr(step, self.total_steps, self.lr, self.lr_min)
        return self.lr

    def apply(self) -> float:
        """Set the learning rate of the next step on every param group and return it."""
        lr = self.lr_at(self.step_count)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lr": self.lr, "lr_min": self.lr_min, "total_steps": self.total_steps,
                "step": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # searches saved before they used this schedule hold torch's CosineAnnealingLR state
        self.step_count = int(state["step"] if "step" in state else state["last_epoch"])
