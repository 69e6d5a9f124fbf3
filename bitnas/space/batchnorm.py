"""BatchNorm2d that stays fast on channels-last CPU tensors with few channels.

The search supernet runs channels-last on CPU (oneDNN convolutions are faster that way), and
partial channels leave edges with C/K = 4 or 8 channels. PyTorch's CPU batch norm on a
channels-last tensor with so few channels is several times slower than on the same data in NCHW
(measured, torch 2.13, 2 threads: (64, 4, 32, 32) forward 2.3 ms vs 0.8 ms; (64, 8, 16, 16)
backward 1.5 ms vs 0.3 ms), so inputs with fewer than 16 channels are normalised
in NCHW and handed back channels-last; the gradients cross the same boundary in the matching
format, so the backward kernel also sees NCHW only. With one thread the channels-last kernel is
only slow below 8 channels (one AVX2 vector; forward + backward, (32, 4, 28, 28): 2.4 ms vs
0.9 ms NCHW; (32, 8, 28, 28): 1.3 ms either way, 3.4 ms with the two relayouts), so there the
boundary is 8. Parameters, buffers and results are those of `nn.BatchNorm2d`; only the memory
path differs.

In training mode both passes go through `bitnas.binary.fused` (`batch_norm_forward`,
`batch_norm_backward`: C++ replays of ATen's kernels where they apply, ATen's operators
elsewhere): bitwise the outputs, running statistics and gradients of `nn.BatchNorm2d`, faster on
channels-last tensors of few channels.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bitnas.binary.fused import batch_norm_backward, batch_norm_forward
from bitnas.common.layout import is_channels_last, relayout

FEW_CHANNELS = 16
FEW_CHANNELS_ONE_THREAD = 8


def _slow_channels_last(x: Tensor) -> bool:
    few = FEW_CHANNELS if torch.get_num_threads() > 1 else FEW_CHANNELS_ONE_THREAD
    return x.device.type == "cpu" and x.shape[1] < few and is_channels_last(x)


class _TrainingBatchNorm(torch.autograd.Function):
    """Training-mode batch norm: `batch_norm_forward` (running statistics updated in place) and
    `batch_norm_backward`, bitwise ATen's `native_batch_norm` and its backward; the output plus
    `addends` in turn (each addend's gradient is the output's)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None, momentum: float, eps: float,
                keep_sign: bool, *addends: Tensor) -> Tensor:
        out, mean, invstd = batch_norm_forward(x, weight, bias, running_mean, running_var, momentum, eps, addends,
                                               keep_sign)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        mask = (need[0], need[1] and weight is not None, need[2])
        dx, dw, db = batch_norm_backward(grad, x, weight, mean, invstd, ctx.eps, mask)  # type: ignore[attr-defined]
        return (dx, dw, db, None, None, None, None, None) + tuple(grad if n else None for n in need[8:])


class BatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` with a faster route for channels-last CPU inputs of few channels.

    `keep_sign` (set by `mark_private_inputs` where a sign reads the output next): the training
    pass also writes sign(output) for that sign (`bitnas.binary.fused.shared_sign`)."""

    keep_sign = False

    def forward(self, x: Tensor, residual: Tensor | None = None, addend: Tensor | None = None) -> Tensor:
        """BN(x), + residual, + addend (each when given; one pass where the C++ forward applies, the
        sums rounding as separate adds in that order did)."""
        addends = tuple(t for t in (residual, addend) if t is not None)
        if _slow_channels_last(x):
            cl, nchw = torch.channels_last, torch.contiguous_format
            out = relayout(self._normalise(relayout(x, nchw, cl)), cl, nchw)
            for t in addends:
                out = out + t
            return out
        return self._normalise(x, addends)

    def _normalise(self, x: Tensor, addends: tuple[Tensor, ...] = ()) -> Tensor:
        """`nn.BatchNorm2d.forward` (+ each of `addends`); in training mode with batch statistics
        through `_TrainingBatchNorm` (the same momentum and running-statistics bookkeeping)."""
        if not (self.training and x.dim() == 4):
            out = super().forward(x)
            for t in addends:
                out = out + t
            return out
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _TrainingBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var, factor,
                                        self.eps, self.keep_sign and x.requires_grad, *addends)
