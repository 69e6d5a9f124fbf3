"""Bit-aware summary: parameters and memory by precision, BOPs, FLOPs, OPs (METHODS §3).

Conventions (also in the README):
- 1-bit parameters: weights of convs whose weights are binarised. 32-bit: every other
  parameter (stem, classifier, BN, PReLU, learned scales). The per-channel α = mean|W| is
  derived, not stored: it folds into the following BN at deployment, so it is not counted.
- Memory bits = n_1bit + 32·n_32bit; compression = 32·(n_1bit + n_32bit) / memory bits,
  i.e. against the same network stored in fp32.
- BOPs of a binary conv = k_h·k_w·(C_in/groups)·C_out·H_out·W_out; FLOPs = multiply-adds of
  full-precision convs and linear layers (BN, pooling, additions not counted, as in DARTS,
  Bi-Real and ReActNet); OPs = FLOPs + BOPs/64.
- The auxiliary head is excluded (DARTS counts parameters without it; it is dropped at test).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from bitnas.binary.layers import BinaryConv2d


@dataclass
class LayerRow:
    name: str
    kind: str
    precision: str
    params: int
    output: list[int]
    bops: int = 0
    flops: int = 0


@dataclass
class Summary:
    params_1bit: int
    params_32bit: int
    bops: int
    flops: int
    input_shape: list[int]
    layers: list[LayerRow] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.params_1bit + self.params_32bit

    @property
    def memory_bits(self) -> int:
        return self.params_1bit + 32 * self.params_32bit

    @property
    def memory_bytes(self) -> float:
        return self.memory_bits / 8

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64

    @property
    def compression(self) -> float:
        return 32 * self.params / self.memory_bits if self.memory_bits else 1.0

    def to_dict(self, per_layer: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "params": self.params, "params_1bit": self.params_1bit, "params_32bit": self.params_32bit,
            "memory_bits": self.memory_bits, "memory_bytes": self.memory_bytes,
            "memory_fp32_bytes": 4 * self.params, "compression": self.compression,
            "bops": self.bops, "flops": self.flops, "ops": self.ops, "input_shape": self.input_shape,
        }
        if per_layer:
            d["layers"] = [asdict(r) for r in self.layers]
        return d


def in_auxiliary_head(name: str) -> bool:
    """True for the auxiliary head's modules (not counted: it is dropped at test time)."""
    return name.startswith("auxiliary_head") or ".auxiliary_head" in name


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> Summary:
    """Count a model's cost with one forward pass (eval mode) on a zero input of `input_shape`."""
    rows: list[LayerRow] = []
    hooks = []
    counted: set[int] = set()

    def hook(name: str):
        def fn(mod: nn.Module, inp: Any, out: Any) -> None:
            o = out[0] if isinstance(out, (tuple, list)) else out
            own = sum(p.numel() for p in mod.parameters(recurse=False))
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                macs = kh * kw * (mod.in_channels // mod.groups) * mod.out_channels * o.shape[-2] * o.shape[-1]
                binary = isinstance(mod, BinaryConv2d) and mod.is_binary
                rows.append(LayerRow(name, type(mod).__name__, "1-bit" if binary else "32-bit", own, list(o.shape[1:]),
                                     bops=macs if binary else 0, flops=0 if binary else macs))
            elif isinstance(mod, nn.Linear):
                rows.append(LayerRow(name, "Linear", "32-bit", own, list(o.shape[1:]), flops=mod.in_features * mod.out_features))
            elif own:
                rows.append(LayerRow(name, type(mod).__name__, "32-bit", own, list(o.shape[1:]) if hasattr(o, "shape") else []))
            counted.add(id(mod))

        return fn

    for name, mod in model.named_modules():
        # The root is hooked too: a model that is itself one conv/linear layer must be counted.
        if not in_auxiliary_head(name):
            hooks.append(mod.register_forward_hook(hook(name or type(mod).__name__)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    p1, p32 = params_by_precision(model)
    return Summary(p1, p32, sum(r.bops for r in rows), sum(r.flops for r in rows), list(input_shape), rows)


def params_by_precision(model: nn.Module) -> tuple[int, int]:
    """(1-bit, 32-bit) parameter counts without the auxiliary head: every parameter of every module,
    reached by a forward pass or not; the latent weights of binarised convs are the 1-bit ones."""
    p1 = p32 = 0
    for name, mod in model.named_modules():
        if in_auxiliary_head(name):
            continue
        for pname, prm in mod.named_parameters(recurse=False):
            if isinstance(mod, BinaryConv2d) and mod.is_binary and pname == "weight":
                p1 += prm.numel()
            else:
                p32 += prm.numel()
    return p1, p32


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_table(s: Summary, per_layer: bool = True) -> str:
    """A Larq-style text table: per-layer rows then totals."""
    lines = []
    if per_layer:
        w = max([len(r.name) for r in s.layers] + [5])
        lines.append(f"{'layer':<{w}}  {'type':<14} {'prec':<6} {'params':>9} {'output':<14} {'BOPs':>9} {'FLOPs':>9}")
        lines.append("-" * (w + 68))
        for r in s.layers:
            lines.append(f"{r.name:<{w}}  {r.kind:<14} {r.precision:<6} {r.params:>9} {'x'.join(map(str, r.output)):<14} "
                         f"{_human(r.bops):>9} {_human(r.flops):>9}")
        lines.append("-" * (w + 68))
    lines += [
        f"input               {'x'.join(map(str, s.input_shape))}",
        f"params              {s.params:,} (1-bit {s.params_1bit:,}, 32-bit {s.params_32bit:,})",
        f"memory              {s.memory_bytes / 2**20:.3f} MiB (fp32 {4 * s.params / 2**20:.3f} MiB, compression {s.compression:.2f}x)",
        f"BOPs                {_human(s.bops)} ({s.bops:,})",
        f"FLOPs               {_human(s.flops)} ({s.flops:,})",
        f"OPs = FLOPs+BOPs/64 {_human(s.ops)}",
    ]
    return "\n".join(lines)
