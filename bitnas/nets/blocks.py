"""Hand-designed 1-bit networks in the macro skeleton of the genotype networks: the controls a
NAS result is compared with (METHODS §4.5).

Skeleton (as `NetworkCIFAR`): fp32 stem (3×3 conv, BN), `layers` cells with reductions at L/3
and 2L/3, global average pool, fp32 classifier. The genotype cells output 4C channels (four
concatenated nodes of C), so a block cell works at width 4C·2^r after r reductions and the stem
outputs 4C. A cell is a fixed block instead of a searched one:

- `bireal` (Liu et al., ECCV 2018): two units sign → binary 3×3 conv → BN → + shortcut. A unit
  that halves the resolution and doubles the width has Bi-Real's real-valued downsample
  shortcut: 2×2 average pool → fp32 1×1 conv → BN.
- `reactnet` (Liu et al., ECCV 2020, ReActNet-A block): RSign → binary 3×3 conv → BN → + x
  (average-pooled when strided) → RPReLU, then RSign → binary 1×1 conv → BN → + x → RPReLU; a
  width-doubling block runs two 1×1 convs on the same input and concatenates them (each with the
  same shortcut), so every shortcut stays parameter-free.

In fp32 (`precision="fp32"`, the parent) every sign is a ReLU, as in the genotype networks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.binary.kernels import batched_kernels
from bitnas.common.layout import relayout, use_channels_last
from bitnas.errors import ConfigError
from bitnas.registry import Registry
from bitnas.space.batchnorm import BatchNorm2d
from bitnas.space.config import OpConfig
from bitnas.space.structures import STRUCTURES, ResidualBlock


class BiRealUnit(nn.Module):
    """sign → binary 3×3 conv → BN → + shortcut (identity, or avg-pool → fp32 1×1 → BN)."""

    def __init__(self, cfg: OpConfig, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = ResidualBlock(cfg, c_in, c_out, 3, stride, 1, 1, 1, **STRUCTURES.get("bireal").opts)
        self.downsample: nn.Module | None = None
        if self.body.shortcut is None:
            pool: nn.Module = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) \
                if stride > 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, nn.Conv2d(c_in, c_out, 1, bias=False), BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out if self.downsample is None else out + self.downsample(x)


class BiRealCell(nn.Sequential):
    """Two Bi-Real units; the first strided and widening in a reduction cell."""

    def __init__(self, cfg: OpConfig, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(BiRealUnit(cfg, c_in, c_out, stride), BiRealUnit(cfg, c_out, c_out, 1))


class ReActCell(nn.Module):
    """ReActNet-A block: 3×3 unit at the input width, then one (or two concatenated) 1×1 units."""

    def __init__(self, cfg: OpConfig, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if c_out not in (c_in, 2 * c_in):
            raise ConfigError(f"reactnet block: width {c_in} → {c_out} (only equal or doubled widths)")
        opts = STRUCTURES.get("reactnet").opts
        self.spatial = ResidualBlock(cfg, c_in, c_in, 3, stride, 1, 1, 1, **opts)
        self.pointwise = nn.ModuleList(ResidualBlock(cfg, c_in, c_in, 1, 1, 0, 1, 1, **opts)
                                       for _ in range(c_out // c_in))

    def forward(self, x: Tensor) -> Tensor:
        h = self.spatial(x)
        outs = [unit(h) for unit in self.pointwise]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


BLOCKS: Registry[type[nn.Module]] = Registry("hand-designed network")
BLOCKS.register("bireal", BiRealCell, aliases=("bi-real",))
BLOCKS.register("reactnet", ReActCell, aliases=("react",))


class BlockNetwork(nn.Module):
    """A hand-designed network (`blocks` names the cell) in the genotype networks' skeleton.

    `channels_last` (None = auto: on for CPU and CUDA inputs) runs the cells on channels-last activations,
    gradients included, as the genotype networks do (`bitnas.common.layout`).
    """

    channels_last: bool | None = None

    def __init__(self, blocks: str, init_channels: int = 36, num_classes: int = 10, layers: int = 20,
                 in_channels: int = 3, cfg: OpConfig | None = None, drop_path_prob: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg or OpConfig()
        self.blocks = BLOCKS.canonical(blocks)
        self.drop_path_prob = drop_path_prob  # set by the trainer; blocks have no droppable paths
        width = 4 * init_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        cell_cls = BLOCKS.get(blocks)
        self.cells = nn.ModuleList()
        reduce_at = (layers // 3, 2 * layers // 3)
        for i in range(layers):
            stride = 2 if i in reduce_at else 1
            self.cells.append(cell_cls(self.cfg, width, width * stride, stride))
            width *= stride
        self.classifier = nn.Linear(width, num_classes)
        self.auxiliary_head = None
        self.last_features: Tensor | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        """(logits, None): the genotype networks' (logits, aux) shape, without an auxiliary head."""
        h = self.stem(x)
        cl = use_channels_last(self.channels_last, x)
        if cl:  # the stem's gradient comes back NCHW, as its kernels run
            h = relayout(h, torch.channels_last, torch.contiguous_format)
        with batched_kernels(self):  # in training, the binary kernels of all cells from one node
            for cell in self.cells:
                h = cell(h)
        if cl:  # global pooling's gradient would come back NCHW into the last cell
            h = relayout(h, torch.channels_last, torch.channels_last)
        pooled = F.adaptive_avg_pool2d(h, 1).flatten(1)
        self.last_features = pooled
        return self.classifier(pooled), None
