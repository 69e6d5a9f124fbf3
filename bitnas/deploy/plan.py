"""What each module of an exported network means for inference, read by the bitpack engine's
compiler (`graph.py`) and by the ONNX / OpenVINO builder (`onnx_export.py`). Which modules hold
binary convs, and which BN follows each, is the table of `modules.py` (shared with the folding).

`describe(module, name)` turns a module of the float network into a plan:
- `ChainPlan`: binary convs in a row (a conv unit, a separable unit or conv, residual blocks,
  conv 7×1/1×7), each a `Step` with the sign transform of its input (a BN before the sign,
  ReActNet's RSign bias), its shortcut and activation; α and the BN after each conv are the
  export's folded multiply-add (`fold.py`);
- `ReducePlan`: the binarised factorised reduce (two strided 1×1 convs, the second offset by one
  pixel, writing the halves of one output);
- `PostAddPlan`: a chain plus a full-precision side branch (Bi-Real's downsample shortcut);
- `ConcatPlan`: a first plan, then chains on its output concatenated (ReActNet's widening 1×1s);
- `SequencePlan`, `ZeroPlan`, `IdentityPlan`, and `TorchPlan` for anything else (stem, pools,
  classifier, full-precision convs), which runs as the torch module it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from bitnas.binary import BinaryConv2d
from bitnas.binary.quantizers import CallableQuantizer, LearnableBiasSign
from bitnas.deploy.fold import bn_affine
from bitnas.deploy.modules import holder
from bitnas.nets.blocks import BiRealUnit, ReActCell
from bitnas.space.operations import FactorizedReduce, Zero
from bitnas.space.structures import RPReLU


@dataclass(eq=False)
class SignTransform:
    """The sign a binary conv takes of its input: sign(x·scale + shift) per channel."""

    scale: np.ndarray | None
    shift: np.ndarray | None


def _sign_transform(bn_in: nn.Module, pre: nn.Module) -> SignTransform | None:
    scale = shift = None
    if isinstance(bn_in, nn.BatchNorm2d):
        s, t = bn_affine(bn_in)
        scale, shift = s, t
    if isinstance(pre, LearnableBiasSign):
        b = pre.bias.detach().double().reshape(-1).numpy()
        shift = b if shift is None else shift + b
    if scale is None and shift is None:
        return None
    return SignTransform(None if scale is None else scale.astype(np.float32),
                         None if shift is None else shift.astype(np.float32))


@dataclass(eq=False)
class Step:
    """One binary conv of a chain: sign transform of its input, shortcut, activation."""

    layer: BinaryConv2d
    name: str
    sign: SignTransform | None = None
    shortcut: str | None = None      # None, "identity" or "avgpool" (of this conv's chain input)
    act: nn.Module | None = None      # PReLU, RPReLU or ReLU after the residual
    pool: nn.Module | None = None
    conv: Any = field(default=None, repr=False)  # the engine's kernel, set by graph.Compiler
    float_out: bool = True
    threshold: bool = False
    fold: Any = field(default=None, repr=False)  # (mul, add) of the output transform, set by graph.Compiler


def _binary_input(layer: nn.Module, pre: nn.Module | None = None) -> bool:
    """True when `layer` is a binary conv whose input is binarised by a sign (its own or an RSign)."""
    if not isinstance(layer, BinaryConv2d) or not layer.is_binary:
        return False
    if isinstance(layer.weight_quantizer, CallableQuantizer):
        return False
    if layer.input_quantizer is None:
        return isinstance(pre, LearnableBiasSign)
    return not isinstance(layer.input_quantizer, CallableQuantizer)


def _identity(m: nn.Module | None) -> bool:
    return m is None or isinstance(m, nn.Identity)


def chain_steps(m: nn.Module, name: str) -> list[Step] | None:
    """The binary convs of `m` as a chain (each conv's output feeds only the next), or None."""
    p = f"{name}." if name else ""
    h = holder(m)
    if h is not None and h.kind == "chain":
        convs = [conv for conv, _, _ in h.convs(m)]
        if _identity(m.pre) and all(_binary_input(getattr(m, c)) for c in convs):
            return [Step(getattr(m, c), p + c) for c in convs]
        return None
    if h is not None and h.kind == "residual" and _binary_input(m.conv, m.pre):
        if not (isinstance(m.pre, LearnableBiasSign) or _identity(m.pre)):
            return None
        if m.shortcut is None:
            shortcut = None
        elif isinstance(m.shortcut, nn.Identity):
            shortcut = "identity"
        elif isinstance(m.shortcut, nn.AvgPool2d):
            shortcut = "avgpool"
        else:
            return None
        if not (_identity(m.act) or isinstance(m.act, (nn.PReLU, RPReLU, nn.ReLU))):
            return None
        return [Step(m.conv, p + "conv", _sign_transform(m.bn_in, m.pre), shortcut,
                     None if _identity(m.act) else m.act, m.shortcut if shortcut == "avgpool" else None)]
    if isinstance(m, BiRealUnit) and m.downsample is None:
        return chain_steps(m.body, p + "body")
    if isinstance(m, nn.Sequential) and len(m) > 0:
        steps: list[Step] = []
        for child_name, child in m.named_children():
            sub = chain_steps(child, p + child_name)
            if sub is None:
                return None
            steps += sub
        return steps
    return None


@dataclass(eq=False)
class ChainPlan:
    steps: list[Step]


@dataclass(eq=False)
class ReducePlan:
    module: FactorizedReduce
    name: str


@dataclass(eq=False)
class PostAddPlan:
    main: ChainPlan
    side: nn.Module


@dataclass(eq=False)
class ConcatPlan:
    first: Any
    chains: list[ChainPlan]


@dataclass(eq=False)
class SequencePlan:
    parts: list[Any]


@dataclass(eq=False)
class ZeroPlan:
    module: Zero


@dataclass(eq=False)
class IdentityPlan:
    pass


@dataclass(eq=False)
class TorchPlan:
    module: nn.Module


Plan = ChainPlan | ReducePlan | PostAddPlan | ConcatPlan | SequencePlan | ZeroPlan | IdentityPlan | TorchPlan


def describe(m: nn.Module, name: str) -> Plan:
    """The plan of module `m` (named `name` in the network)."""
    if isinstance(m, Zero):
        return ZeroPlan(m)
    if isinstance(m, nn.Identity):
        return IdentityPlan()
    steps = chain_steps(m, name)
    if steps:
        return ChainPlan(steps)
    h = holder(m)
    if (h is not None and h.kind == "reduce" and _identity(m.pre)
            and all(_binary_input(getattr(m, c)) for c, _, _ in h.convs(m))):
        return ReducePlan(m, name)  # type: ignore[arg-type]
    if isinstance(m, BiRealUnit) and m.downsample is not None:
        main = describe(m.body, f"{name}.body")
        if isinstance(main, ChainPlan):
            return PostAddPlan(main, m.downsample)
    if isinstance(m, ReActCell):
        pointwise = [describe(u, f"{name}.pointwise.{i}") for i, u in enumerate(m.pointwise)]
        if all(isinstance(p, ChainPlan) for p in pointwise):
            return ConcatPlan(describe(m.spatial, f"{name}.spatial"), pointwise)  # type: ignore[arg-type]
    if isinstance(m, nn.Sequential) and len(m) > 0:
        return SequencePlan([describe(c, f"{name}.{n}") for n, c in m.named_children()])
    return TorchPlan(m)


def act_params(act: nn.Module | None, c: int) -> dict[str, Any]:
    """The activation after a residual as data: none, relu, prelu (slope) or rprelu (+ shifts)."""
    if act is None:
        return {"act": "none"}
    if isinstance(act, nn.ReLU):
        return {"act": "relu"}
    prelu = act.prelu if isinstance(act, RPReLU) else act
    slope = prelu.weight.detach().float().reshape(-1).numpy()
    slope = np.broadcast_to(slope, (c,)).copy()
    if isinstance(act, RPReLU):
        return {"act": "rprelu", "slope": slope, "shift_in": act.shift_in.detach().float().reshape(-1).numpy(),
                "shift_out": act.shift_out.detach().float().reshape(-1).numpy()}
    return {"act": "prelu", "slope": slope}


def neg_bits(row: dict[str, Any], bits: np.ndarray) -> np.ndarray:
    """(C_out, C_in/g, KH, KW) booleans of an export's binary layer row, true where the stored
    weight is −1 (stored bit 0)."""
    off, nb = row["bits"]
    n = int(np.prod(row["shape"]))
    signs = np.unpackbits(np.asarray(bits[off:off + nb]), bitorder="big")[:n]
    return (signs == 0).reshape(row["shape"])


def folded(exp: dict[str, Any], row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(mul, add) in float64 of a binary layer: α and the BN after it, per output channel."""
    off, n = row["fold"]
    v = np.asarray(exp["fold"][off:off + n], dtype=np.float64)
    return v[:n // 2], v[n // 2:]
