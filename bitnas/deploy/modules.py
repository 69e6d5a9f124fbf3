"""What each module that holds binary convs means to the engine: one table, read by the export's
folding (`following_bn`: which BatchNorm follows which conv, for `fold.fold`) and by the planner
(`plan.describe`: which convs form a chain on the XNOR-popcount kernels).

A binary conv held by a module the table does not know would silently run on the float path with
no BatchNorm folded into it; `check_known` refuses such a network at export time instead.
Adding a module type: one `Holder` entry here, and the planner and the folding both follow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from bitnas.binary import BinaryConv2d
from bitnas.binary.inspect import binarized_layers
from bitnas.errors import BitnasError
from bitnas.space.operations import Conv7x1x7, FactorizedReduce, ReLUConvBN
from bitnas.space.structures import ConvUnit, ResidualBlock, SepUnit

ConvBN = tuple[str, str | None, int]  # (conv attribute, BN attribute applied right after it or None, BN channel offset)


def _bn(holder: nn.Module, name: str) -> str | None:
    """`name` when the holder has a BatchNorm there, else None."""
    return name if isinstance(getattr(holder, name, None), nn.BatchNorm2d) else None


@dataclass(frozen=True)
class Holder:
    """How the engine runs a module holding binary convs.

    kind: "chain" (its convs in a row, input through `pre`), "residual" (one conv with input BN,
    RSign, shortcut and activation) or "reduce" (the factorised reduce: two strided convs writing
    the halves of one output). convs: its convs in order, each with the BN that follows it.
    """

    kind: str
    convs: Callable[[nn.Module], list[ConvBN]]


HOLDERS: dict[type[nn.Module], Holder] = {
    ConvUnit: Holder("chain", lambda m: [("conv", "bn", 0)]),
    ReLUConvBN: Holder("chain", lambda m: [("conv", "bn", 0)]),
    SepUnit: Holder("chain", lambda m: [("dw", _bn(m, "bn_dw"), 0), ("pw", "bn", 0)]),
    Conv7x1x7: Holder("chain", lambda m: [("conv_1", None, 0), ("conv_2", "bn", 0)]),
    ResidualBlock: Holder("residual", lambda m: [("conv", _bn(m, "bn"), 0)]),
    FactorizedReduce: Holder("reduce", lambda m: [("conv_1", "bn", 0), ("conv_2", "bn", m.conv_1.out_channels)]),
}


def holder(m: nn.Module) -> Holder | None:
    """The table's entry for `m` (its class or the nearest listed base class), or None."""
    for cls in type(m).__mro__:
        if cls in HOLDERS:
            return HOLDERS[cls]
    return None


def following_bn(model: nn.Module) -> dict[str, tuple[str, int] | None]:
    """{binary conv name: (name of the BN applied right after it, channel offset) or None}, for every
    binary conv held by a module the table knows."""
    out: dict[str, tuple[str, int] | None] = {}
    for hname, m in model.named_modules():
        h = holder(m)
        if h is None:
            continue
        prefix = f"{hname}." if hname else ""
        for conv, bn, offset in h.convs(m):
            layer = getattr(m, conv)
            if isinstance(layer, BinaryConv2d) and layer.is_binary:
                out[prefix + conv] = (prefix + bn, offset) if bn else None
    return out


def check_known(model: nn.Module, known: dict[str, tuple[str, int] | None] | None = None) -> None:
    """Refuse (BitnasError) a network with a binary conv that no module of the table holds.

    known: `following_bn(model)` when the caller has it already."""
    known = following_bn(model) if known is None else known
    modules = dict(model.named_modules())
    for name, _ in binarized_layers(model):
        if name in known:
            continue
        parent = name.rpartition(".")[0]
        kind = type(modules[parent]).__name__ if parent in modules and parent else type(model).__name__
        raise BitnasError(f"export: binary conv {name} is held by a {kind}, a module the engine does not know "
                          f"(known: {', '.join(sorted(c.__name__ for c in HOLDERS))}); add it to "
                          "bitnas.deploy.modules.HOLDERS rather than let it run unfolded on the float path")
