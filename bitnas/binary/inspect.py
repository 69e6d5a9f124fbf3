"""Find the binarised layers of any model."""
from __future__ import annotations

from torch import nn

from bitnas.binary.layers import BinaryConv2d


def binarized_layers(model: nn.Module) -> list[tuple[str, BinaryConv2d]]:
    """(name, layer) for every conv whose weights are 1-bit, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryConv2d) and m.is_binary]


def is_binary_model(model: nn.Module) -> bool:
    return bool(binarized_layers(model))
