"""`conv2d`: `F.conv2d` with a strided 1×1 convolution on CPU taken as subsample + 1×1.

oneDNN's AVX2 weight-gradient kernel for 1×1 convolutions (`jit_1x1:avx2`, backward_weights)
corrupts the heap when the stride is 2, the input is channels-last and has fewer than 8
channels (torch 2.13; report and reproduction in `docs/onednn-1x1-stride2-crash.md`). The
factorised reduce of a partial-channel edge is exactly that convolution. A 1×1 convolution with
stride s equals the same convolution with stride 1 applied to every s-th row and column, so on
CPU we subsample first: identical values and gradients, and oneDNN never gets a strided 1×1
problem. CUDA and other devices take `F.conv2d` unchanged. A channels-last input is
subsampled into a dense channels-last tensor and its gradient comes back channels-last
(`spatial_slice`), so the layout survives the workaround.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from bitnas.common.layout import spatial_slice


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
           padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
    """`F.conv2d(x, weight, bias, stride, padding, dilation, groups)`, strided 1×1 on CPU safe."""
    sh, sw = stride
    if x.device.type == "cpu" and weight.shape[-2:] == (1, 1) and (sh > 1 or sw > 1):
        ph, pw = padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        return F.conv2d(spatial_slice(x, (0, 0), (sh, sw)), weight, bias, 1, 0, 1, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
