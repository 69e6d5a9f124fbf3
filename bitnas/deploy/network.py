"""The engine's network: cells of genotype networks (two inputs, nodes summing two ops, concatenation)
and the network module around the units of graph.py (stems, cells, classifier).

Every producer of a state whose binary readers all pack it under one sign transform writes that
packed form in its last conv's epilogue (graph.emit_for), so only states nobody can emit for (the
stem's output, a cell's concatenation) are packed by a separate pass.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.deploy import engine
from bitnas.deploy.arena import Arena
from bitnas.deploy.graph import CL, ZERO, Act, Compiler, Unit, ZeroUnit, emit_for, fold_conv_bn
from bitnas.nets.cells import Cell
from bitnas.space.edges import node_state

# Sub-batches (see EngineNetwork.chunk): images per pass through the cells, and the binary MACs per
# byte of float activation written and read below which a network counts as memory-bound.
CHUNK_IMAGES = 4
MEMORY_BOUND_MACS_PER_BYTE = 32.0


class CellUnit:
    """A cell: two preprocessed inputs, nodes summing two ops (the second addend fused into a
    conv's output transform when one of them ends in a binary conv), concatenation. After the
    first call for an input size, the nodes write straight into their channel block of the
    concatenated output."""

    def __init__(self, cell: Cell, name: str, compiler: Compiler) -> None:
        self.pre0 = compiler.unit(cell.preprocess0, f"{name}.preprocess0")
        self.pre1 = compiler.unit(cell.preprocess1, f"{name}.preprocess1")
        self.ops = [compiler.unit(op, f"{name}.ops.{i}") for i, op in enumerate(cell.ops)]
        self.indices, self.steps, self.concat = cell.indices, cell.steps, cell.concat
        self.zero_ops = cell.ops
        self.arena = compiler.arena
        self.layouts: dict[tuple[int, ...], tuple[int, int, int]] = {}
        readers = [[op for op, k in zip(self.ops, self.indices) if k == s] for s in range(2 + self.steps)]
        emit_for(self.pre0, readers[0])
        emit_for(self.pre1, readers[1])
        for i in range(self.steps):
            producer = self._producer(i)
            if producer is not None:
                emit_for(producer, readers[node_state(i)])

    def _order(self, i: int) -> tuple[int, int]:
        """Node i's ops (a, b): b is the one that adds a's output in its epilogue when one can."""
        a, b = 2 * i, 2 * i + 1
        if not self.ops[b].fuses_post and self.ops[a].fuses_post:
            a, b = b, a
        return a, b

    def _producer(self, i: int) -> Unit | None:
        """The op whose output is node i's value (its epilogue adds the other's), None when the
        node sums two outputs in torch."""
        a, b = self._order(i)
        if isinstance(self.ops[a], ZeroUnit) or self.ops[b].fuses_post:
            return self.ops[b]
        return self.ops[a] if isinstance(self.ops[b], ZeroUnit) else None

    def _node(self, i: int, states: list[Act], dst: tuple[Tensor, np.ndarray] | None) -> Act:
        a, b = self._order(i)
        ha = self.ops[a](states[self.indices[a]])
        xb = states[self.indices[b]]
        fused = self.ops[b].fuses_post
        out = dst[1] if dst is not None else None
        if ha is ZERO:
            hb = self.ops[b](xb, out=out) if fused else self.ops[b](xb)
        elif fused:
            hb = self.ops[b](xb, ha, out=out)
        else:
            hb = self.ops[b](xb)
            if hb is ZERO:
                hb = ha
            elif dst is not None:
                torch.add(ha.t, hb.t, out=dst[0])
                return Act(*dst)
            else:
                hb = Act(ha.t + hb.t)
        if hb is ZERO:  # both ops are `none`: zeros of the shape the op gives
            hb = Act(self.zero_ops[b](xb.t))
        if dst is not None and hb.nhwc() is not dst[1]:  # not written in place
            dst[0].copy_(hb.t)
            copied = Act(*dst)
            copied.packs = hb.packs  # the same values
            return copied
        return hb

    def __call__(self, s0: Act, s1: Act) -> Act:
        states = [self.pre0(s0), self.pre1(s1)]
        key = tuple(s0.t.shape) + tuple(s1.t.shape)
        layout = self.layouts.get(key)
        buf: tuple[Tensor, np.ndarray] | None = None
        if layout is not None:
            c, h, w = layout
            buf = self.arena.act((id(self), "floats"), states[0].t.shape[0], c * len(self.concat), h, w)
        for i in range(self.steps):
            dst = None
            if buf is not None and node_state(i) in self.concat:
                j = self.concat.index(node_state(i))
                dst = (buf[0][:, j * c:(j + 1) * c], buf[1][..., j * c:(j + 1) * c])  # (NCHW view, NHWC array)
            states.append(self._node(i, states, dst))
        if buf is None:
            first = states[self.concat[0]].t
            if all(states[k].t.shape == first.shape for k in self.concat):
                self.layouts[key] = (first.shape[1], first.shape[2], first.shape[3])
            return Act(torch.cat([states[k].t for k in self.concat], dim=1))
        for j, k in enumerate(self.concat):  # blocks not written by their node (inputs, repeats)
            if k < 2 or self.concat.index(k) != j:
                buf[0][:, j * c:(j + 1) * c].copy_(states[k].t)
        return Act(*buf)


class EngineNetwork(nn.Module):
    """An exported network whose binary convs run on the bitpack kernels; forward(x) gives
    (logits, None) like the float network, x normalised as in training (NCHW float32)."""

    def __init__(self, model: nn.Module, exp: dict[str, Any], *, threads: int = 1, isa: str | None = None) -> None:
        super().__init__()
        engine.extension()
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.net = model.eval().to(memory_format=CL)
        self.isa, self.threads = engine.resolve_isa(isa), int(threads)
        self.arena = Arena()
        compiler = Compiler(exp, engine.isa_spec(isa), self.threads, self.arena)  # "auto": per-layer kernel choice
        self.genotype_cells = hasattr(model, "stem_forward")
        self.stems = {n: fold_conv_bn(getattr(model, n)) for n in ("stem", "stem0", "stem1") if hasattr(model, n)}
        if self.genotype_cells:
            self.cells: list[Any] = [CellUnit(c, f"cells.{i}", compiler) for i, c in enumerate(model.cells)]
        else:
            self.cells = [compiler.unit(c, f"cells.{i}") for i, c in enumerate(model.cells)]
            for producer, consumer in zip(self.cells, self.cells[1:]):
                emit_for(producer, [consumer])
        self.units = compiler.compiled
        self.kernels = compiler.kernels
        self.chunk = chunk_images(self.kernels, model.cells, compiler.layers)

    def kernel_rows(self) -> dict[str, int]:
        """How many binary convs ran on each ISA row in their last call (the automatic choice may
        put a layer on the best row's rival, e.g. amx or avx512)."""
        rows: dict[str, int] = {}
        for conv in self.kernels:
            if conv.last_isa is not None:
                rows[conv.last_isa] = rows.get(conv.last_isa, 0) + 1
        return rows

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        with torch.inference_mode():
            self.arena.begin()
            x = x.float().contiguous(memory_format=CL)
            if self.genotype_cells:
                if "stem0" in self.stems:
                    s0 = self.stems["stem0"](x)
                    s1 = self.stems["stem1"](s0)
                else:
                    s0 = s1 = self.stems["stem"](x)
            else:
                s0 = s1 = self.stems["stem"](x)
            n = x.shape[0]
            if not self.chunk or n <= self.chunk:
                y = self._cells(s0, s1).t
            else:
                y = None
                for i in range(0, n, self.chunk):
                    if i:
                        self.arena.begin()  # the last chunk's buffers are free once its output is copied
                    p0 = s0[i:i + self.chunk]
                    part = self._cells(p0, p0 if s1 is s0 else s1[i:i + self.chunk]).t
                    if y is None:
                        y = torch.empty((n, *part.shape[1:]), dtype=part.dtype).contiguous(memory_format=CL)
                    y[i:i + self.chunk].copy_(part)
            pooled = F.adaptive_avg_pool2d(y, 1).flatten(1)
            return self.net.classifier(pooled), None

    def _cells(self, s0: Tensor, s1: Tensor) -> Act:
        """The cells on stem outputs s0, s1 (the same tensor for one stem)."""
        a0 = Act(s0)
        a1 = a0 if s1 is s0 else Act(s1)
        if self.genotype_cells:
            for cell in self.cells:
                a0, a1 = a1, cell(a0, a1)
        else:
            for cell in self.cells:
                a1 = cell(a1)
        return a1

    def extra_repr(self) -> str:
        return f"isa={self.isa}, threads={self.threads}, binary convs on the kernels={self.units}"


def chunk_images(kernels: list[engine.BinaryConv], cells: nn.Module, compiled: set[int]) -> int:
    """Images per pass through the cells (0: the whole batch at once).

    A memory-bound network (thin convs: DARTS_V2's depthwise and 36-channel 1×1 convs do ~3 binary
    MACs per byte of float activation they write and read as residual, Bi-Real's 3×3 64→64 ~70)
    runs its cells on sub-batches of CHUNK_IMAGES, so a cell's activations stay in L2 instead of
    streaming the batch's through memory once per op: DARTS_V2 at batch 64 measured ~2x less CPU
    time per image at sub-batches of 4 than whole, Bi-Real slightly more (issue 18's Sapphire
    Rapids). Only when every conv and linear layer in the cells is on the kernels: their per-pixel
    results do not depend on the batch, so the logits stay those of one pass, bit for bit, while a
    torch fp32 conv could pick another algorithm for another batch size.
    """
    if not kernels:
        return 0
    for m in cells.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in compiled:
            return 0
    macs = sum(k.out_channels * (k.in_channels // k.groups) * k.kh * k.kw for k in kernels)
    moved = sum(8 * k.out_channels for k in kernels)  # float32 output written and a residual read, per pixel
    return CHUNK_IMAGES if macs / moved < MEMORY_BOUND_MACS_PER_BYTE else 0
