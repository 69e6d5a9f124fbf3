"""Mixed precision and device back-end settings of the training loops (`amp`, `cudnn_benchmark`).

`amp=bf16|fp16` runs forward and loss under `torch.autocast`; the parameters, the optimizer
state and every gradient stay float32, so the latent weights of the 1-bit convolutions are
updated in float32 exactly as without autocast. What autocast changes in a binary convolution
(`bitnas.binary.layers.BinaryConv2d`): the signs ±1 of the input and of the weight are exact in
bf16 and fp16, α = mean|W| is computed in float32 from the float32 latent weight, and the
kernel α·sign(W) is rounded to the autocast type when the convolution casts it (relative error
at most 2⁻⁸ for bf16, 2⁻¹¹ for fp16); the convolution's products are exact and its sums are
accumulated by the back end and rounded to the autocast type, as for any autocast convolution.
fp16 also scales the loss (`torch.amp.GradScaler`; steps whose gradients overflow are skipped
and the scale halves); bf16 has float32's range and needs no scaler.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

AMP_CHOICES = ("none", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str, device: torch.device) -> ContextManager[Any]:
    """`torch.autocast` on `device` in the dtype of `amp`; a no-op context for amp=none."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[amp])


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for amp=fp16 (fp16's range needs one), else None."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def configure_backends(cudnn_benchmark: bool) -> None:
    """`torch.backends.cudnn.benchmark` as asked: cuDNN times its algorithms per input shape and
    keeps the fastest (faster for fixed shapes, not bitwise reproducible); CPU runs ignore it."""
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def sync_interval(every: int, device: torch.device) -> int:
    """Steps between the host's reads of a training loop's device values (`sync_every`; 0 = auto:
    every step on the CPU, where reading a value costs nothing and a non-finite step is caught
    before it is applied, every 50 steps on an accelerator, which then never waits for the host)."""
    if every > 0:
        return every
    return 1 if device.type == "cpu" else 50
