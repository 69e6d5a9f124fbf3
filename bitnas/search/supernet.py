"""The search supernet: mixed ops with partial channels, edge normalisation, single paths.

- `MixedOp`: softmax-weighted sum of candidate ops (DARTS). With K > 1 only C/K channels go
  through the ops; the rest bypass (max-pooled when the edge reduces), then channels are
  shuffled in K groups (PC-DARTS). K = 1 is exactly the DARTS mixed op.
- Edge normalisation: β per incoming edge, softmaxed over a node's edges, scales each edge.
- Single-path mode (`paths`): each edge runs one chosen op — CP-NAS samples and random search.
α and β are registered parameters, so they move with `.to(device)` and live in checkpoints.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.space.config import OpConfig
from bitnas.space.genotypes import Genotype
from bitnas.space.operations import FactorizedReduce, ReLUConvBN, build_op
from bitnas.space.spaces import SearchSpace


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across `groups` (ShuffleNet), as PC-DARTS does after each edge."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def num_edges(steps: int) -> int:
    return sum(2 + i for i in range(steps))


class MixedOp(nn.Module):
    """All candidate ops of one edge."""

    def __init__(self, c: int, stride: int, ops: Sequence[str], cfg: OpConfig, k: int = 1) -> None:
        super().__init__()
        if c % k:
            raise ValueError(f"channels {c} not divisible by partial-channel ratio K={k}")
        self.k = k
        self.stride = stride
        cp = c // k
        self.ops = nn.ModuleList()
        for name in ops:
            op = build_op(name, cp, stride, cfg)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(cp, affine=False))
            self.ops.append(op)
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if (k > 1 and stride == 2) else None

    def _partial(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.k == 1:
            return x, None
        cp = x.shape[1] // self.k
        return x[:, :cp], x[:, cp:]

    def _merge(self, out: Tensor, rest: Tensor | None) -> Tensor:
        if rest is None:
            return out
        if self.bypass_pool is not None:
            rest = self.bypass_pool(rest)
        return channel_shuffle(torch.cat([out, rest], dim=1), self.k)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        xp, rest = self._partial(x)
        out = sum(w * op(xp) for w, op in zip(weights, self.ops))
        return self._merge(out, rest)

    def forward_single(self, x: Tensor, index: int) -> Tensor:
        """Run only op `index` (weight 1)."""
        xp, rest = self._partial(x)
        return self._merge(self.ops[index](xp), rest)


class SearchCell(nn.Module):
    """A DARTS search cell: every node takes every earlier state through a MixedOp."""

    def __init__(self, steps: int, multiplier: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, ops: Sequence[str], cfg: OpConfig, k: int) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.preprocess0 = FactorizedReduce(c_pp, c, cfg) if reduction_prev else ReLUConvBN(c_pp, c, cfg)
        self.preprocess1 = ReLUConvBN(c_p, c, cfg)
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self.edges.append(MixedOp(c, 2 if reduction and j < 2 else 1, ops, cfg, k))

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor | None = None, edge_weights: Tensor | None = None,
                path: Sequence[int] | None = None) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for i in range(self.steps):
            total = 0
            for j, h in enumerate(states):
                e = offset + j
                if path is not None:
                    out = self.edges[e].forward_single(h, path[e])
                else:
                    out = self.edges[e](h, weights[e])
                if edge_weights is not None:
                    out = edge_weights[e] * out
                total = total + out
            offset += len(states)
            states.append(total)
        return torch.cat(states[-self.multiplier:], dim=1)


def normalized_edge_weights(betas: Tensor, steps: int) -> Tensor:
    """Softmax of β over each node's incoming edges, concatenated (PC-DARTS edge normalisation)."""
    parts, start = [], 0
    for i in range(steps):
        n = 2 + i
        parts.append(F.softmax(betas[start:start + n], dim=-1))
        start += n
    return torch.cat(parts)


class SuperNetwork(nn.Module):
    """The CIFAR-style supernet over a search space, in either precision."""

    def __init__(self, space: SearchSpace, cfg: OpConfig, init_channels: int = 16, num_classes: int = 10,
                 layers: int = 8, in_channels: int = 3, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, k_normal: int = 1, k_reduce: int = 1, edge_norm: bool = False) -> None:
        super().__init__()
        self.space = space
        self.ops = tuple(space.ops)
        self.steps, self.multiplier = steps, multiplier
        self.edge_norm = edge_norm
        self.cfg = cfg.with_(affine=False)
        c_stem = stem_multiplier * init_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, c = c_stem, c_stem, init_channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c *= 2
            cell = SearchCell(steps, multiplier, c_pp, c_p, c, reduction, reduction_prev, self.ops, self.cfg,
                              k_reduce if reduction else k_normal)
            reduction_prev = reduction
            self.cells.append(cell)
            c_pp, c_p = c_p, multiplier * c
        self.classifier = nn.Linear(c_p, num_classes)
        e, o = num_edges(steps), len(self.ops)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(e, o))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(e, o))
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(e))
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(e))
        self.last_features: Tensor | None = None

    ARCH_NAMES = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")

    def arch_parameters(self) -> list[nn.Parameter]:
        ps = [self.alphas_normal, self.alphas_reduce]
        return ps + [self.betas_normal, self.betas_reduce] if self.edge_norm else ps

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n not in self.ARCH_NAMES]

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if n not in self.ARCH_NAMES]

    def forward(self, x: Tensor, paths: dict[str, Sequence[int]] | None = None) -> tuple[Tensor, None]:
        """Logits (and None, for the fixed networks' (logits, aux) shape). `paths` = single path per cell type."""
        s0 = s1 = self.stem(x)
        wn = F.softmax(self.alphas_normal, dim=-1)
        wr = F.softmax(self.alphas_reduce, dim=-1)
        en = normalized_edge_weights(self.betas_normal, self.steps) if self.edge_norm and paths is None else None
        er = normalized_edge_weights(self.betas_reduce, self.steps) if self.edge_norm and paths is None else None
        for cell in self.cells:
            if paths is not None:
                out = cell(s0, s1, path=paths["reduce" if cell.reduction else "normal"])
            elif cell.reduction:
                out = cell(s0, s1, wr, er)
            else:
                out = cell(s0, s1, wn, en)
            s0, s1 = s1, out
        pooled = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        self.last_features = pooled
        return self.classifier(pooled), None

    def arch_weights(self) -> dict[str, Tensor]:
        """Softmaxed α (and normalised β) — what the run directory records each epoch."""
        out = {"normal": F.softmax(self.alphas_normal, -1).detach(), "reduce": F.softmax(self.alphas_reduce, -1).detach()}
        if self.edge_norm:
            out["beta_normal"] = normalized_edge_weights(self.betas_normal, self.steps).detach()
            out["beta_reduce"] = normalized_edge_weights(self.betas_reduce, self.steps).detach()
        return out

    def edge_strengths(self) -> tuple[Tensor, Tensor]:
        """Per-edge op strengths used for derivation: softmax(α), times normalised β if enabled."""
        w = self.arch_weights()
        n, r = w["normal"], w["reduce"]
        if self.edge_norm:
            n = n * w["beta_normal"][:, None]
            r = r * w["beta_reduce"][:, None]
        return n, r

    def genotype(self) -> Genotype:
        n, r = self.edge_strengths()
        return derive_genotype(n, r, self.ops, self.steps, self.multiplier, self.space.zero_op)


def _derive_cell(scores: Tensor, ops: Sequence[str], steps: int, zero_op: str | None) -> list[tuple[str, int]]:
    """Per node keep the 2 incoming edges with the strongest non-zero op (DARTS rule)."""
    keep = [k for k, o in enumerate(ops) if o != zero_op]
    if not keep:
        raise ValueError("the space has no op besides the zero op")
    gene: list[tuple[str, int]] = []
    start = 0
    for i in range(steps):
        n = 2 + i
        w = scores[start:start + n]
        best_val = [max(float(w[j, k]) for k in keep) for j in range(n)]
        best_op = [max(keep, key=lambda k, j=j: float(w[j, k])) for j in range(n)]
        chosen = sorted(range(n), key=lambda j: -best_val[j])[:2]
        for j in sorted(chosen):
            gene.append((ops[best_op[j]], j))
        start += n
    return gene


def derive_genotype(normal: Tensor, reduce: Tensor, ops: Sequence[str], steps: int = 4, multiplier: int = 4,
                    zero_op: str | None = "none") -> Genotype:
    """Genotype from per-edge op scores (E×O); -inf marks ops no longer available."""
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=tuple(_derive_cell(normal, ops, steps, zero_op)), normal_concat=concat,
                    reduce=tuple(_derive_cell(reduce, ops, steps, zero_op)), reduce_concat=concat)
