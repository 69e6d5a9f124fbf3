"""1-bit building blocks: quantizers, binary layers, inspection."""
from bitnas.binary.inspect import binarized_layers, is_binary_model
from bitnas.binary.layers import BinaryConv2d
from bitnas.binary.quantizers import (
    QUANTIZERS,
    ApproxSign,
    LearnableBiasSign,
    Quantizer,
    SteSign,
    SwishSign,
    get,
    sign,
)

__all__ = [
    "QUANTIZERS", "ApproxSign", "BinaryConv2d", "LearnableBiasSign", "Quantizer", "SteSign",
    "SwishSign", "binarized_layers", "get", "is_binary_model", "sign",
]
