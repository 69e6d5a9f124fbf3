"""BatchNorm2d that stays fast on channels-last CPU tensors with few channels.

The search supernet runs channels-last on CPU (oneDNN convolutions are faster that way), and
partial channels leave edges with C/K = 4 or 8 channels. PyTorch's CPU batch norm on a
channels-last tensor with so few channels is several times slower than on the same data in NCHW
(measured, torch 2.13, 2 threads: (64, 4, 32, 32) forward 2.3 ms vs 0.8 ms; (64, 8, 16, 16)
backward 1.5 ms vs 0.3 ms), so inputs with fewer than 16 channels are normalised
in NCHW and handed back channels-last; the gradients cross the same boundary in the matching
format, so the backward kernel also sees NCHW only. Parameters, buffers and results are those
of `nn.BatchNorm2d`; only the memory path differs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

FEW_CHANNELS = 16


def _slow_channels_last(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dim() == 4 and x.shape[1] < FEW_CHANNELS
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


class _Relayout(torch.autograd.Function):
    """`x` copied to memory format `to`; its gradient copied back to format `back`."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, to: torch.memory_format,
                back: torch.memory_format) -> Tensor:
        ctx.back = back  # type: ignore[attr-defined]
        return x.contiguous(memory_format=to)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad.contiguous(memory_format=ctx.back), None, None  # type: ignore[attr-defined]


def relayout(x: Tensor, to: torch.memory_format, grad_to: torch.memory_format) -> Tensor:
    """`x` in memory format `to`, whose gradient flows back in format `grad_to`: a kernel that
    gets its input and its output gradient in different formats takes a slow path."""
    return _Relayout.apply(x, to, grad_to)


class BatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` with a faster route for channels-last CPU inputs of few channels."""

    def forward(self, x: Tensor) -> Tensor:
        if _slow_channels_last(x):
            cl, nchw = torch.channels_last, torch.contiguous_format
            return relayout(super().forward(relayout(x, nchw, cl)), cl, nchw)
        return super().forward(x)
