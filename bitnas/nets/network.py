"""Fixed networks built from a genotype: CIFAR-style and ImageNet-style (DARTS §4.1).

Stem, auxiliary head and classifier are full precision; every conv inside the cells is
1-bit when `cfg.precision == "binary"`. The same arguments with precision "fp32" build the
full-precision parent with identical module names and kernel shapes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.binary.kernels import batched_kernels
from bitnas.common.layout import relayout, use_channels_last
from bitnas.errors import BitnasError, ConfigError
from bitnas.registry import Registry
from bitnas.space.config import OpConfig
from bitnas.space.genotypes import Genotype
from bitnas.nets.cells import Cell
from bitnas.nets.limits import check_build_kwargs


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary head; pools 5×5/stride 3 on 8×8 maps (CIFAR), adaptively to 2×2 on
    other sizes (e.g. 7×7 maps of 28×28 inputs), so any input resolution works."""

    def __init__(self, c: int, num_classes: int, imagenet: bool = False) -> None:
        super().__init__()
        self.imagenet = imagenet
        self.features = nn.Sequential(
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        if not self.imagenet and x.shape[-1] == 8:
            x = F.avg_pool2d(x, 5, stride=3, padding=0, count_include_pad=False)
        elif self.imagenet and x.shape[-1] >= 7:
            x = F.avg_pool2d(x, 5, stride=2, padding=0, count_include_pad=False)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class _GenotypeNetwork(nn.Module):
    """Shared cell stack; subclasses define the stem.

    `channels_last` (None = auto: on for CPU and CUDA inputs, True, False) runs the cells on
    channels-last activations: the stem output is relaid once, and the gradient of the last
    feature map is handed back channels-last, so every cell kernel sees one format both ways
    (see `bitnas.common.layout`). Values are those of NCHW up to float rounding.
    """

    channels_last: bool | None = None

    def _build_cells(self, genotype: Genotype, c: int, layers: int, c_stem: int, reduction_prev: bool,
                     cfg: OpConfig, auxiliary: bool, num_classes: int, reduce_at: tuple[int, ...]) -> int:
        c_pp, c_p, c_cur = c_stem, c_stem, c
        self.cells = nn.ModuleList()
        self.aux_index = 2 * layers // 3
        c_aux = 0
        for i in range(layers):
            reduction = i in reduce_at
            if reduction:
                c_cur *= 2
            edges, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            cell = Cell(edges, concat, c_pp, c_p, c_cur, reduction, reduction_prev, cfg)
            reduction_prev = reduction
            self.cells.append(cell)
            c_pp, c_p = c_p, cell.multiplier * c_cur
            if i == self.aux_index:
                c_aux = c_p
        self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, self._imagenet) if auxiliary else None
        self.classifier = nn.Linear(c_p, num_classes)
        return c_p

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Last feature map (before global pooling) and the auxiliary logits (training only)."""
        s0, s1 = self.stem_forward(x)
        cl = use_channels_last(self.channels_last, x)
        if cl:  # the stem's gradient comes back NCHW, as its kernels run
            nhwc, nchw = torch.channels_last, torch.contiguous_format
            s1_nhwc = relayout(s1, nhwc, nchw)
            s0 = s1_nhwc if s0 is s1 else relayout(s0, nhwc, nchw)
            s1 = s1_nhwc
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        if cl:  # global pooling's gradient would come back NCHW into the last cell
            s1 = relayout(s1, torch.channels_last, torch.channels_last)
        return s1, aux

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits, auxiliary logits or None), as in DARTS; in training, the binary kernels of all
        cells come from one node (`batched_kernels`)."""
        with batched_kernels(self):
            feat, aux = self.forward_features(x)
        pooled = F.adaptive_avg_pool2d(feat, 1).flatten(1)
        self.last_features = pooled
        return self.classifier(pooled), aux


class NetworkCIFAR(_GenotypeNetwork):
    """Stem 3×3 conv → 3C channels; reductions at L/3 and 2L/3."""

    _imagenet = False

    def __init__(self, genotype: Genotype, init_channels: int = 36, num_classes: int = 10, layers: int = 20,
                 in_channels: int = 3, auxiliary: bool = False, cfg: OpConfig | None = None,
                 drop_path_prob: float = 0.0, stem_multiplier: int = 3) -> None:
        super().__init__()
        cfg = cfg or OpConfig()
        self.cfg, self.genotype, self.drop_path_prob = cfg, genotype, drop_path_prob
        c_stem = stem_multiplier * init_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        self._build_cells(genotype, init_channels, layers, c_stem, False, cfg, auxiliary, num_classes,
                          (layers // 3, 2 * layers // 3))

    def stem_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.stem(x)
        return s, s


class NetworkImageNet(_GenotypeNetwork):
    """Two stride-2 stems (÷8 before the cells), reductions at L/3 and 2L/3."""

    _imagenet = True

    def __init__(self, genotype: Genotype, init_channels: int = 48, num_classes: int = 1000, layers: int = 14,
                 in_channels: int = 3, auxiliary: bool = False, cfg: OpConfig | None = None,
                 drop_path_prob: float = 0.0) -> None:
        super().__init__()
        cfg = cfg or OpConfig()
        self.cfg, self.genotype, self.drop_path_prob = cfg, genotype, drop_path_prob
        c = init_channels
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, c // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=True), nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
        self._build_cells(genotype, c, layers, c, True, cfg, auxiliary, num_classes, (layers // 3, 2 * layers // 3))

    def stem_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


NETWORKS: Registry[type[_GenotypeNetwork]] = Registry("network")
NETWORKS.register("cifar", NetworkCIFAR)
NETWORKS.register("imagenet", NetworkImageNet)


def build_network(genotype: Genotype | None, *, style: str = "cifar", precision: str = "binary",
                  structure: str = "cpnas", init_channels: int = 36, layers: int = 20, num_classes: int = 10,
                  in_channels: int = 3, auxiliary: bool = False, drop_path_prob: float = 0.0, blocks: str = "",
                  **op_kw: Any) -> nn.Module:
    """Build the fixed network of `genotype`, or the hand-designed network `blocks` (bireal,
    reactnet; `bitnas.nets.blocks`) in the same skeleton; `op_kw` go to OpConfig (activation, ...)."""
    cfg = OpConfig(precision=precision, structure=structure, **op_kw)
    if blocks:
        from bitnas.nets.blocks import BlockNetwork

        if style != "cifar" or auxiliary:
            raise ConfigError(f"network {blocks}: hand-designed networks come in the cifar style without an "
                              "auxiliary head")
        return BlockNetwork(blocks, init_channels=init_channels, num_classes=num_classes, layers=layers,
                            in_channels=in_channels, cfg=cfg, drop_path_prob=drop_path_prob)
    if genotype is None:
        raise ConfigError("a network needs a genotype or a hand-designed network name")
    cls = NETWORKS.get(style)
    return cls(genotype, init_channels=init_channels, num_classes=num_classes, layers=layers,
               in_channels=in_channels, auxiliary=auxiliary, cfg=cfg, drop_path_prob=drop_path_prob)


def arch_spec(genotype: Genotype | None, **build_kw: Any) -> dict[str, Any]:
    """A plain dict (genotype or None + build_network kwargs) stored in checkpoints to rebuild the net."""
    return {"genotype": genotype.to_dict() if genotype is not None else None, "network": dict(build_kw)}


def network_from_spec(spec: Any, source: str = "checkpoint", stored: int | None = None,
                      **override: Any) -> nn.Module:
    """Rebuild a fixed network from `arch_spec` output — no search code involved.

    The spec is data read from a file: its genotype and every build argument are checked (names,
    types, sizes; with `stored`, the number of weights the file holds, against the smallest
    network the spec describes) before anything is allocated."""
    if not isinstance(spec, dict) or not isinstance(spec.get("network"), dict) or "genotype" not in spec:
        raise BitnasError(f"{source}: no valid architecture stored (expected genotype and network settings)")
    kw = dict(spec["network"])
    kw.update(override)
    g = spec["genotype"]
    if g is None and not kw.get("blocks"):
        raise BitnasError(f"{source}: neither a genotype nor a hand-designed network is stored")
    genotype = Genotype.from_dict(g, f"{source} genotype") if g is not None else None
    check_build_kwargs(kw, source, multiplier=len(genotype.normal_concat) if genotype is not None else 4,
                       stored=stored)
    return build_network(genotype, **kw)


def tensor_elements(state: Any) -> int:
    """The number of tensor elements in a (nested) state dict."""
    if isinstance(state, Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(tensor_elements(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_elements(v) for v in state)
    return 0


def network_from_checkpoint(ck: Any, source: str) -> nn.Module:
    """The network of a bitnas training checkpoint dict, with its weights loaded."""
    if not isinstance(ck, dict) or "arch" not in ck or not isinstance(ck.get("model"), dict):
        raise BitnasError(f"{source}: not a bitnas training checkpoint (no stored architecture/weights)")
    model = network_from_spec(ck["arch"], source, stored=tensor_elements(ck["model"]))
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise BitnasError(f"{source}: weights do not fit the stored architecture "
                          f"({str(e).splitlines()[0][:200]})") from None
    return model
