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
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bitnas.common.layout import is_channels_last, relayout

FEW_CHANNELS = 16
FEW_CHANNELS_ONE_THREAD = 8


def _slow_channels_last(x: Tensor) -> bool:
    few = FEW_CHANNELS if torch.get_num_threads() > 1 else FEW_CHANNELS_ONE_THREAD
    return x.device.type == "cpu" and x.shape[1] < few and is_channels_last(x)


class BatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` with a faster route for channels-last CPU inputs of few channels."""

    def forward(self, x: Tensor) -> Tensor:
        if _slow_channels_last(x):
            cl, nchw = torch.channels_last, torch.contiguous_format
            return relayout(super().forward(relayout(x, nchw, cl)), cl, nchw)
        return super().forward(x)
