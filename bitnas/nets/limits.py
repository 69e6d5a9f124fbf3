"""Sizes of a fixed network, checked before anything is allocated.

The architecture of a checkpoint (or an export, or the command line) is data: a file claiming
`layers = 10**6` or a huge width must be refused before the network is built, not after it
has eaten the machine's memory. `check_build_kwargs` checks every build argument's name, type
and range; with the number of weights a checkpoint actually holds it also refuses an
architecture whose smallest possible parameter count exceeds them (a claim the file cannot
back). `check_input_size` refuses inputs too small for the network's stride-2 stages.
"""
from __future__ import annotations

import math
from typing import Any

from bitnas.errors import ConfigError
from bitnas.space.config import OpConfig

MAX_LAYERS = 256
MAX_INIT_CHANNELS = 4096
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 64
MAX_IMAGE_SIZE = 4096
MAX_PARAMETERS = 1 << 28  # 1 GiB of fp32 weights: far above any network of this family
STEM_MULTIPLIER = 3

INT_KEYS = {"init_channels": MAX_INIT_CHANNELS, "layers": MAX_LAYERS, "num_classes": MAX_CLASSES,
            "in_channels": MAX_IN_CHANNELS}
OTHER_KEYS = {"style": str, "precision": str, "structure": str, "auxiliary": bool, "drop_path_prob": float, "blocks": str,
              "activation": str, "weight_quantizer": str, "weight_scale": str, "pad_value": float,
              "binary_preprocess": bool}


OP_KEYS = ("precision", "structure", "activation", "weight_quantizer", "weight_scale", "pad_value", "binary_preprocess")


def reduction_cells(layers: int) -> tuple[int, int]:
    """Indices of the reduction cells (DARTS: at L/3 and 2L/3)."""
    return layers // 3, 2 * layers // 3


def min_parameters(style: str, init_channels: int, layers: int, num_classes: int, in_channels: int,
                   multiplier: int) -> int:
    """A lower bound on the parameter count: stems, every cell's two preprocessing 1×1 convs and the
    classifier, which every genotype has (the ops on the edges only add to it)."""
    c = init_channels
    if style == "imagenet":
        total = in_channels * (c // 2) * 9 + (c // 2) * c * 9 + c * c * 9
        c_pp = c_p = c
    else:
        c_pp = c_p = STEM_MULTIPLIER * c
        total = in_channels * c_pp * 9
    reduce_at = reduction_cells(layers)
    for i in range(layers):
        if i in reduce_at:
            c *= 2
        total += (c_pp + c_p) * c
        c_pp, c_p = c_p, multiplier * c
        if total > MAX_PARAMETERS:
            break
    return total + c_p * num_classes


def check_build_kwargs(kw: dict[str, Any], source: str, multiplier: int = 4, stored: int | None = None) -> None:
    """Refuse unknown build arguments, wrong types, sizes out of range, a network larger than
    MAX_PARAMETERS, or (given `stored`, the weights a file holds) one the file cannot hold."""
    for key, value in kw.items():
        if key in INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT_KEYS[key]:
                raise ConfigError(f"{source}: {key} must be an integer in 1..{INT_KEYS[key]}, got {value!r}")
        elif key in OTHER_KEYS:
            tp = OTHER_KEYS[key]
            ok = isinstance(value, tp) and not (tp is float and isinstance(value, bool))
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if tp is float and ok and not math.isfinite(value):
                ok = False
            if not ok:
                kind = "finite number" if tp is float else tp.__name__
                raise ConfigError(f"{source}: {key} must be a {kind}, got {value!r:.40}")
        else:
            raise ConfigError(f"{source}: unknown network setting '{key}'")
    OpConfig(**{k: kw[k] for k in OP_KEYS if k in kw})  # known structure, quantizers, weight scale
    style = kw.get("style", "cifar")
    if style not in ("cifar", "imagenet"):
        raise ConfigError(f"{source}: style must be cifar or imagenet, got {style!r}")
    c = kw.get("init_channels", 36)
    if style == "imagenet" and c < 2:
        raise ConfigError(f"{source}: an imagenet-style network needs init_channels ≥ 2 (its first stem has C/2), got {c}")
    n = min_parameters(style, c, kw.get("layers", 20), kw.get("num_classes", 10), kw.get("in_channels", 3), multiplier)
    if n > MAX_PARAMETERS:
        raise ConfigError(f"{source}: the network would have more than {n:,} parameters (limit {MAX_PARAMETERS:,}); "
                          "init_channels or layers is far too large")
    if stored is not None and n > stored:
        raise ConfigError(f"{source}: the stored architecture needs at least {n:,} parameters but the file holds only "
                          f"{stored:,} weights (a corrupt or forged architecture)")


def check_image_side(size: Any, source: str) -> None:
    """Refuse an image side that is not an integer in 1..MAX_IMAGE_SIZE."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"{source}: the input side must be an integer in 1..{MAX_IMAGE_SIZE}, got {size!r:.40}")


def check_input_size(style: str, layers: int, size: Any, source: str, blocks: str = "") -> None:
    """Refuse an input side out of 1..MAX_IMAGE_SIZE, or (genotype networks) one that some stride-2
    stage would reduce below 2 pixels before it halves again (the factorised reduce needs 2×2);
    hand-designed `blocks` networks pool down to any size."""
    check_image_side(size, source)
    if blocks:
        return

    def half(s: int) -> int:
        return (s + 1) // 2

    if style == "imagenet":
        s_pp = half(half(size))
        s_p, reduction_prev = half(s_pp), True
    else:
        s_pp = s_p = size
        reduction_prev = False
    reduce_at = reduction_cells(layers)
    for i in range(layers):
        reduction = i in reduce_at
        if (reduction_prev and s_pp < 2) or (reduction and s_p < 2):
            raise ConfigError(f"{source}: {size}×{size} inputs are too small for a {style}-style network of "
                              f"{layers} cells (cell {i} would halve a 1×1 map)")
        s_pp, s_p, reduction_prev = s_p, half(s_p) if reduction else s_p, reduction

