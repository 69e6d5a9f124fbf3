"""Binary layers: ordinary layers plus `input_quantizer` and `weight_quantizer` (Larq style)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.binary.quantizers import QuantizerLike, get
from bitnas.common.conv import conv2d
from bitnas.common.layout import is_channels_last, spatial_slice
from bitnas.errors import ConfigError

WeightScale = Literal["channel", "layer", "learned", "none"]
WEIGHT_SCALES = ("channel", "layer", "learned", "none")


class BinaryConv2d(nn.Conv2d):
    """`nn.Conv2d` whose input and/or weight are binarised.

    input_quantizer: sign applied to the input (None: full-precision input).
    weight_quantizer: binarises the latent W to α·q(W), e.g. "ste_sign" (clipped STE, the
        default of every peer); None keeps full-precision weights.
    weight_scale: α per output channel = mean|W| (XNOR-Net, detached), one α per layer
        (PCNN), a learned per-channel α initialised from mean|W|, or none (α = 1).
    pad_value: value used for spatial padding. 0 (default, as DARTS/Bi-Real code) pads a
        ±1 input with zeros, i.e. a ternary border; 1.0 keeps it strictly binary (Larq).

    In eval mode, when the input is ±1 (an input quantizer that signs, or `signed_input` set by a
    block that signs before the conv, as ReActNet's RSign) and the weights are α·sign(W), the conv
    accumulates sign(x)·sign(W) — integers, exact in float32 up to 2^24 — and scales by α after:
    the exact α·Σ±1, where a float32 sum of ±α that is exactly zero could round to a tiny ±ε and
    flip the next sign. Training keeps conv(sign(x), α·sign(W)) bit for bit.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        input_quantizer: QuantizerLike = None,
        weight_quantizer: QuantizerLike = None,
        weight_scale: WeightScale = "channel",
        pad_value: float = 0.0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if weight_scale not in WEIGHT_SCALES:
            raise ConfigError(f"weight_scale '{weight_scale}' unknown; known: {', '.join(WEIGHT_SCALES)}")
        self.input_quantizer = get(input_quantizer)
        wq = get(weight_quantizer)
        self.weight_quantizer = wq
        self.weight_scale = weight_scale
        self.pad_value = float(pad_value)
        self.signed_input = False
        self.register_buffer("frozen_kernel", None, persistent=False)
        self.register_buffer("frozen_signs", None, persistent=False)
        self.register_buffer("frozen_alpha", None, persistent=False)
        if wq is not None and weight_scale == "learned":
            init = self.weight.detach().abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
            self.scale = nn.Parameter(init.clone())
        else:
            self.register_parameter("scale", None)

    @property
    def is_binary(self) -> bool:
        """True when the weights are binarised (the layer counts as 1-bit)."""
        return self.weight_quantizer is not None

    def alpha(self) -> Tensor:
        """The scaling factor α (shape C_out×1×1×1), detached unless learned."""
        w = self.weight
        if self.weight_scale == "channel":
            return w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
        if self.weight_scale == "layer":
            return w.detach().abs().mean().expand(w.shape[0], 1, 1, 1)
        if self.weight_scale == "learned":
            return self.scale
        return torch.ones(w.shape[0], 1, 1, 1, dtype=w.dtype, device=w.device)

    # A kernel computed ahead for this forward (`bitnas.binary.kernels.batched_kernels`), taken once.
    ready_kernel: Tensor | None = None

    def binary_weight(self) -> Tensor:
        """The reconstructed kernel α·sign(W) actually used in forward (W itself if fp32)."""
        ready = self.ready_kernel
        if ready is not None:
            self.ready_kernel = None
            return ready
        if self.frozen_kernel is not None:
            return self.frozen_kernel
        if self.weight_quantizer is None:
            return self.weight
        if self.weight_scale == "learned":  # α takes a gradient: the plain product
            return self.alpha() * self.weight_quantizer(self.weight)
        return self.weight_quantizer.scaled(self.weight, self.alpha())

    def freeze(self, kernel: Tensor | None = None) -> None:
        """Inference: use a fixed kernel (default: the current α·sign(W)) instead of binarising W
        in every forward. Not saved in state_dict; `unfreeze()` undoes it."""
        k = self.binary_weight() if kernel is None else kernel
        self.frozen_kernel = k.detach().clone().to(self.weight.device, self.weight.dtype)
        self.frozen_signs, self.frozen_alpha = _factorise(self.frozen_kernel)

    def unfreeze(self) -> None:
        self.frozen_kernel = self.frozen_signs = self.frozen_alpha = None

    def integer_kernel(self) -> tuple[Tensor, Tensor | None] | None:
        """(sign(W), α or None when there is no α) when this forward accumulates ±1 products as
        integers: eval mode, ±1 input, α·sign(W) weights. None otherwise (the kernel is used as
        it is)."""
        if self.training or self.weight_quantizer is None or not getattr(self.weight_quantizer, "signs", False):
            return None
        iq = self.input_quantizer
        if not (self.signed_input if iq is None else getattr(iq, "signs", False)):
            return None
        if self.frozen_kernel is not None:
            if self.frozen_signs is None:
                return None
            return self.frozen_signs, self.frozen_alpha
        signs = self.weight_quantizer(self.weight)
        return signs, (None if self.weight_scale == "none" else self.alpha())

    def subsamples_first(self, x: Tensor) -> bool:
        """True for a strided 1×1 conv without padding on a channels-last CPU input: `conv2d` runs
        it as subsample + stride-1 conv, and subsampling before the input quantizer gives the same
        values (the quantizer is element-wise) with a quarter of its passes forward and backward."""
        return (x.device.type == "cpu" and self.kernel_size == (1, 1) and self.stride != (1, 1)
                and self.padding == (0, 0) and is_channels_last(x))

    def forward(self, x: Tensor, subsampled: bool = False, quantized: bool = False) -> Tensor:
        """The conv of `x`; `subsampled=True`: `x` is already subsampled by the stride
        (`x[:, :, h0::sh, w0::sw]`, only for the convs `subsamples_first` accepts);
        `quantized=True`: `x` is already the input quantizer's output (`Quantizer.with_residual`)."""
        split = self.integer_kernel()
        if split is None:
            return self._conv(x, self.binary_weight(), self.bias, subsampled, quantized)
        signs, alpha = split
        y = self._conv(x, signs, None, subsampled, quantized)
        if alpha is not None:
            y = y * alpha.reshape(1, -1, 1, 1)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def _conv(self, x: Tensor, w: Tensor, bias: Tensor | None, subsampled: bool, quantized: bool = False) -> Tensor:
        """Input quantizer (unless `quantized`), padding and the conv with kernel `w` (the forward's paths)."""
        iq = None if quantized else self.input_quantizer
        if subsampled or self.subsamples_first(x):
            if not subsampled:
                x = spatial_slice(x, (0, 0), self.stride)
            if iq is not None:
                x = iq(x)
            return F.conv2d(x, w, bias, 1, 0, 1, self.groups)
        if iq is not None:
            x = iq(x)
        if self.pad_value != 0.0 and any(p > 0 for p in self.padding):
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
            return conv2d(x, w, bias, self.stride, (0, 0), self.dilation, self.groups)
        return conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        iq = getattr(self.input_quantizer, "name", None)
        wq = getattr(self.weight_quantizer, "name", None)
        return f"{s}, input_quantizer={iq}, weight_quantizer={wq}, weight_scale={self.weight_scale}"


def _factorise(kernel: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """(signs ±1, α per output channel, C_out×1×1×1) with α·signs == `kernel` exactly, or
    (None, None) when the kernel is not of that form (a channel of more than one magnitude)."""
    alpha = kernel.abs().amax(dim=(1, 2, 3), keepdim=True)
    signs = torch.where(kernel >= 0, 1.0, -1.0).to(kernel.dtype)
    if not torch.equal(alpha * signs, kernel):
        return None, None
    return signs, alpha
