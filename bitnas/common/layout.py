"""Memory layout of activations: channels-last on CPU, with gradients kept in a chosen format.

oneDNN convolutions and PyTorch's CPU pooling on few channels are several times faster on
channels-last (NHWC) tensors than on NCHW ones (measured, torch 2.13, one thread:
(32, 8, 28, 28) depthwise 3×3 forward + backward 11 ms vs 1.8 ms, 3×3 max pool with stride 2
5.8 ms vs 0.7 ms), so the search supernet and the fixed networks run their cells channels-last
on CPU. A kernel that receives its input and its output gradient in different formats takes a
slow path, so every switch of format also fixes the format the gradient flows back in.
"""
from __future__ import annotations

import torch
from torch import Tensor

CHANNELS_LAST_CHOICES = {"auto": None, "on": True, "off": False}


def is_channels_last(x: Tensor) -> bool:
    """True for a 4-d tensor laid out channels-last (and not also plain contiguous)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def use_channels_last(setting: bool | None, x: Tensor) -> bool:
    """The setting (True/False), or for None ("auto"): on for CPU and CUDA tensors (cuDNN's
    convolutions, above all under autocast, prefer NHWC; not measured here, no GPU)."""
    return x.device.type in ("cpu", "cuda") if setting is None else setting


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


class _SpatialSlice(torch.autograd.Function):
    """x[:, :, h0::sh, w0::sw] as a dense tensor in x's memory format; the gradient is scattered
    into zeros of that format (autograd's own slice backward would return NCHW)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, start: tuple[int, int],
                step: tuple[int, int]) -> Tensor:
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        ctx.meta = (x.shape, fmt, start, step)  # type: ignore[attr-defined]
        (h0, w0), (sh, sw) = start, step
        return x[:, :, h0::sh, w0::sw].contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        shape, fmt, (h0, w0), (sh, sw) = ctx.meta  # type: ignore[attr-defined]
        out = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=fmt).zero_()
        out[:, :, h0::sh, w0::sw] = grad
        return out, None, None


def spatial_slice(x: Tensor, start: tuple[int, int], step: tuple[int, int]) -> Tensor:
    """`x[:, :, h0::sh, w0::sw]`: a view for NCHW tensors; for channels-last ones a dense
    channels-last copy whose gradient also comes back channels-last (same values either way)."""
    if is_channels_last(x):
        return _SpatialSlice.apply(x, start, step)
    (h0, w0), (sh, sw) = start, step
    return x[:, :, h0::sh, w0::sw]


class _SpatialSlices(torch.autograd.Function):
    """Several `_SpatialSlice` grids of one channels-last tensor with one backward: the gradients
    are added into one zero tensor in the order given, which gives bit for bit what autograd's
    sum of one zero-filled scatter per grid gives (each value + 0, an exact identity but for
    −0 → +0, which the sum of scatters also produces), with one fill and no full-size sum; with
    one torch thread and the C++ extension, one pass writing every element once
    (`bitnas.binary.fused.grid_gradient`)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, starts: tuple[tuple[int, int], ...],
                step: tuple[int, int]) -> tuple[Tensor, ...]:
        ctx.meta = (x.shape, starts, step)  # type: ignore[attr-defined]
        sh, sw = step
        return tuple(x[:, :, h0::sh, w0::sw].contiguous(memory_format=torch.channels_last) for h0, w0 in starts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: Tensor | None) -> tuple[Tensor, None, None]:
        shape, starts, (sh, sw) = ctx.meta  # type: ignore[attr-defined]
        from bitnas.binary.fused import grid_gradient  # here: bitnas.binary imports this module

        fast = grid_gradient(grads, starts, (sh, sw), shape)
        if fast is not None:
            return fast, None, None
        g0 = next(g for g in grads if g is not None)
        out = torch.empty(shape, dtype=g0.dtype, device=g0.device, memory_format=torch.channels_last).zero_()
        for (h0, w0), g in zip(starts, grads):
            if g is not None:
                out[:, :, h0::sh, w0::sw].add_(g)
        return out, None, None


def spatial_slices(x: Tensor, starts: tuple[tuple[int, int], ...], step: tuple[int, int]) -> tuple[Tensor, ...]:
    """`spatial_slice(x, start, step)` for each of `starts` (grids that do not overlap), with one
    backward for all: the same values and, bit for bit, the same gradient."""
    if is_channels_last(x):
        return _SpatialSlices.apply(x, starts, step)
    return tuple(spatial_slice(x, start, step) for start in starts)
