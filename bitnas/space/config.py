"""OpConfig: how an op is built (precision, module structure, quantizers) — one switch for twins."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from bitnas.binary.layers import WEIGHT_SCALES, BinaryConv2d
from bitnas.binary.quantizers import QUANTIZERS
from bitnas.errors import ConfigError

PRECISIONS = ("fp32", "binary")


@dataclass(frozen=True)
class OpConfig:
    """Everything an op needs besides channels and stride.

    precision: "binary" builds the 1-bit child (binary weights and activations inside the
        cells), "fp32" the full-precision parent with the same module names and kernel shapes.
    structure: module structure of binary conv ops (see `bitnas.space.structures`).
    activation: activation quantizer of binary convs (ste_sign, approx_sign, swish_sign).
    weight_quantizer / weight_scale / pad_value: see `BinaryConv2d`.
    affine: learnable BN affine (False inside search supernets, as in DARTS).
    binary_preprocess: binarise the 1×1 preprocessing and factorized-reduce convs too.
    """

    precision: str = "binary"
    structure: str = "cpnas"
    activation: str = "ste_sign"
    weight_quantizer: str = "ste_sign"
    weight_scale: str = "channel"
    pad_value: float = 0.0
    affine: bool = True
    binary_preprocess: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}' unknown; known: {', '.join(PRECISIONS)}")
        if self.weight_scale not in WEIGHT_SCALES:
            raise ConfigError(f"weight_scale '{self.weight_scale}' unknown; known: {', '.join(WEIGHT_SCALES)}")
        QUANTIZERS.canonical(self.activation)
        QUANTIZERS.canonical(self.weight_quantizer)
        from bitnas.space.structures import STRUCTURES

        STRUCTURES.canonical(self.structure)

    @property
    def binary(self) -> bool:
        return self.precision == "binary"

    def with_(self, **kw: Any) -> "OpConfig":
        return replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def conv(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        binary: bool | None = None,
    ) -> BinaryConv2d:
        """A conv that is 1-bit when this config is binary (or `binary` forces it)."""
        b = self.binary if binary is None else binary
        return BinaryConv2d(
            c_in, c_out, kernel, stride, padding, dilation, groups, bias=False,
            input_quantizer=self.activation if b else None,
            weight_quantizer=self.weight_quantizer if b else None,
            weight_scale=self.weight_scale, pad_value=self.pad_value if b else 0.0,
        )

    def pre_activation(self) -> nn.Module:
        """ReLU before a full-precision conv; nothing before a binary one (ReLU then sign = +1)."""
        return nn.Identity() if self.binary else nn.ReLU(inplace=False)
