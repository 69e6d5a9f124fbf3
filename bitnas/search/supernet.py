"""The search supernet: mixed ops with partial channels, edge normalisation, single paths.

- `MixedOp`: softmax-weighted sum of candidate ops (DARTS). With K > 1 only C/K channels go
  through the ops; the rest bypass (max-pooled when the edge reduces), then channels are
  shuffled in K groups (PC-DARTS). K = 1 is exactly the DARTS mixed op.
- Edge normalisation: β per incoming edge, softmaxed over a node's edges, scales each edge.
- Single-path mode (`paths`): each edge runs one chosen op (−1 leaves the edge out) — CP-NAS
  samples and random search.
- Collapse remedies (`collapse.py`): `temperature` T of the op softmax, softmax(α / T), and
  `max_param_free` capping the parameter-free ops of each derived cell (defaults: 1, no cap).
α and β are registered parameters, so they move with `.to(device)` and live in checkpoints.

Hot path: a cell computes each node in one pass — every op output of every incoming edge is
accumulated with fused multiply-adds (edge weight folded into the op weight), the bypassing
channels of all edges are summed, and one interleaving concat replaces PC-DARTS' per-edge
concat + channel shuffle (the shuffle is a fixed permutation, so it commutes with the sum).
The zero op is never run. On CPU, activations are channels-last after the stem (oneDNN
convolutions on few channels are an order of magnitude faster in NHWC than in NCHW).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.space.edges import concat_range, node_edges, node_inputs, num_edges, rank_edges
from bitnas.common.layout import is_channels_last, relayout, use_channels_last
from bitnas.errors import ConfigError
from bitnas.search.collapse import KeptEdge, cap_param_free
from bitnas.space.batchnorm import BatchNorm2d
from bitnas.space.config import OpConfig
from bitnas.space.genotypes import Genotype
from bitnas.space.operations import FactorizedReduce, ReLUConvBN, Zero, build_op
from bitnas.space.spaces import SearchSpace


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across `groups` (ShuffleNet), as PC-DARTS does after each edge."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffle_concat(part: Tensor, rest: Tensor, groups: int) -> Tensor:
    """`channel_shuffle(cat([part, rest], 1), groups)` in one copy (part holds C/groups channels).

    The result is channels-last when `part` is, contiguous NCHW otherwise.
    """
    n, cp, h, w = part.shape
    if part.is_contiguous(memory_format=torch.channels_last) and not part.is_contiguous():
        body = rest.permute(0, 2, 3, 1).reshape(n, h, w, groups - 1, cp).transpose(3, 4)
        out = torch.cat([part.permute(0, 2, 3, 1).unsqueeze(4), body], dim=4)
        return out.view(n, h, w, cp * groups).permute(0, 3, 1, 2)
    body = rest.reshape(n, groups - 1, cp, h, w).transpose(1, 2)
    return torch.cat([part.unsqueeze(2), body], dim=2).view(n, cp * groups, h, w)


def _weighted_sum(terms: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """Σ w·t with one fused multiply-add per term after the first."""
    (w0, t0), *others = terms
    acc = t0 * w0
    for w, t in others:
        acc = torch.addcmul(acc, t, w)
    return acc


def fit_partial_ratio(k: int, channels: int) -> int:
    """The largest K' ≤ k dividing `channels` (the init channels C): then every cell's C/K' is an
    integer and reduction cells (2C, 4C channels) keep an even C/K' for their factorized reduce."""
    if k < 1:
        raise ValueError(f"partial-channel ratio K must be at least 1, got {k}")
    return max(d for d in range(1, k + 1) if channels % d == 0)


class MixedOp(nn.Module):
    """All candidate ops of one edge.

    The zero op contributes exactly nothing (its output is 0, so is the gradient of its
    weight), so it is never run; neither is an op whose weight is exactly 0 (α = −inf).
    """

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
                op = nn.Sequential(op, BatchNorm2d(cp, affine=False))
            self.ops.append(op)
        self.active = tuple(i for i, op in enumerate(self.ops) if not isinstance(op, Zero))
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if (k > 1 and stride == 2) else None

    def _partial(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(channels through the ops, bypassing channels); the first is made dense once here
        (in x's memory format) rather than by every op."""
        if self.k == 1:
            return x, None
        cp = x.shape[1] // self.k
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return x[:, :cp].contiguous(memory_format=fmt), x[:, cp:]

    def bypass(self, rest: Tensor) -> Tensor:
        """The channels that skip the ops (max-pooled when the edge reduces)."""
        return self.bypass_pool(rest) if self.bypass_pool is not None else rest

    def _merge(self, out: Tensor, rest: Tensor | None) -> Tensor:
        if rest is None:
            return out
        return shuffle_concat(out, self.bypass(rest), self.k)

    def weighted_terms(self, xp: Tensor, weights: Tensor,
                       live: Sequence[bool] | None = None) -> list[tuple[Tensor, Tensor]]:
        """(weight, op output) for every op that can contribute; `live[i]` False skips op i."""
        return [(weights[i], self.ops[i](xp)) for i in self.active if live is None or live[i]]

    def _zeros(self, xp: Tensor) -> Tensor:
        return Zero(self.stride)(xp)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        xp, rest = self._partial(x)
        terms = self.weighted_terms(xp, weights, (weights != 0).tolist())
        out = _weighted_sum(terms) if terms else self._zeros(xp)
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
            for j in range(node_inputs(i)):
                self.edges.append(MixedOp(c, 2 if reduction and j < 2 else 1, ops, cfg, k))

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor | None = None, edge_weights: Tensor | None = None,
                path: Sequence[int] | None = None) -> Tensor:
        """Mixed forward with op `weights` (E×O) and optional `edge_weights` (E), or a single `path`
        (one op index per edge; a negative index leaves the edge out)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        if path is not None:
            return self._forward_path(states, path)
        live = (weights != 0).tolist()
        for edges in node_edges(self.steps):
            states.append(self._node(states, edges.start, weights, edge_weights, live))
        return torch.cat(states[-self.multiplier:], dim=1)

    def _node(self, states: list[Tensor], offset: int, weights: Tensor, edge_weights: Tensor | None,
              live: list[list[bool]]) -> Tensor:
        """One intermediate node, fused: Σ_edges β_e·shuffle(cat(Σ_ops w·op(x_part), bypass(x_rest)))
        = shuffle(cat(Σ_edges Σ_ops β_e·w·op(x_part), Σ_edges β_e·bypass(x_rest))), one concat per node."""
        coef = weights[offset:offset + len(states)]
        if edge_weights is not None:
            coef = coef * edge_weights[offset:offset + len(states), None]
        terms: list[tuple[Tensor, Tensor]] = []
        rests: list[tuple[Tensor, Tensor] | Tensor] = []
        for j, h in enumerate(states):
            edge = self.edges[offset + j]
            xp, rest = edge._partial(h)
            terms += edge.weighted_terms(xp, coef[j], live[offset + j])
            if rest is not None:
                r = edge.bypass(rest)
                rests.append((edge_weights[offset + j], r) if edge_weights is not None else r)
        if not terms:
            edge = self.edges[offset]
            terms = [(coef[0, 0], edge._zeros(edge._partial(states[0])[0]))]
        out = _weighted_sum(terms)
        if not rests:
            return out
        if edge_weights is not None:
            rest_sum = _weighted_sum(rests)  # type: ignore[arg-type]
        else:
            rest_sum = rests[0]
            for r in rests[1:]:
                rest_sum = rest_sum + r
        return shuffle_concat(out, rest_sum, self.edges[offset].k)  # type: ignore[arg-type]

    def _forward_path(self, states: list[Tensor], path: Sequence[int]) -> Tensor:
        for edges in node_edges(self.steps):
            total: Tensor | None = None
            for e, h in zip(edges, states):
                index = int(path[e])
                if index < 0:
                    continue
                out = self.edges[e].forward_single(h, index)
                total = out if total is None else total + out
            if total is None:
                raise ValueError(f"path {list(path)}: node {len(states)} has no incoming edge")
            states.append(total)
        return torch.cat(states[-self.multiplier:], dim=1)


def normalized_edge_weights(betas: Tensor, steps: int) -> Tensor:
    """Softmax of β over each node's incoming edges, concatenated (PC-DARTS edge normalisation)."""
    return torch.cat([F.softmax(betas[e.start:e.stop], dim=-1) for e in node_edges(steps)])


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
        self.channels_last: bool | None = None
        self.temperature = 1.0
        self.max_param_free = -1

    def op_weights(self, alphas: Tensor) -> Tensor:
        """softmax(α / T) over each edge's ops (T = 1: exactly the DARTS softmax)."""
        return F.softmax(alphas if self.temperature == 1.0 else alphas / self.temperature, dim=-1)

    def use_channels_last(self, x: Tensor) -> bool:
        """Channels-last activations: `channels_last` if set, else on for CPU and CUDA (oneDNN convs on few
        channels are an order of magnitude faster in NHWC than in NCHW)."""
        return use_channels_last(self.channels_last, x)

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
        if self.use_channels_last(x):
            s0 = s1 = relayout(s0, torch.channels_last, torch.contiguous_format)
        wn = self.op_weights(self.alphas_normal)
        wr = self.op_weights(self.alphas_reduce)
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
        out = {"normal": self.op_weights(self.alphas_normal).detach(),
               "reduce": self.op_weights(self.alphas_reduce).detach()}
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
        return derive_genotype(n, r, self.ops, self.steps, self.multiplier, self.space.zero_op, self.max_param_free)


def _derive_cell(scores: Tensor, ops: Sequence[str], steps: int, zero_op: str | None,
                 max_param_free: int = -1) -> list[tuple[str, int]]:
    """Per node keep the 2 incoming edges with the strongest non-zero op (DARTS rule), then cap the
    parameter-free ops of the cell (`cap_param_free`; −1 = no cap)."""
    kept: list[KeptEdge] = []
    for edges, node in zip(node_edges(steps), rank_edges(scores, ops, steps, zero_op)):
        for e in sorted(node[:2], key=lambda e: e.input):
            kept.append((edges[e.input], e.op, e.input))
    return [(ops[op], inp) for _, op, inp in cap_param_free(kept, scores, ops, max_param_free)]


def derive_genotype(normal: Tensor, reduce: Tensor, ops: Sequence[str], steps: int = 4, multiplier: int = 4,
                    zero_op: str | None = "none", max_param_free: int = -1) -> Genotype:
    """Genotype from per-edge op scores (E×O); -inf marks ops no longer available. `max_param_free`
    ≥ 0 caps the parameter-free ops per cell (`collapse.cap_param_free`)."""
    concat = concat_range(steps, multiplier)
    return Genotype(normal=tuple(_derive_cell(normal, ops, steps, zero_op, max_param_free)), normal_concat=concat,
                    reduce=tuple(_derive_cell(reduce, ops, steps, zero_op, max_param_free)), reduce_concat=concat)


def genotype_paths(g: Genotype, ops: Sequence[str]) -> dict[str, list[int]]:
    """The supernet single path of a genotype: op index on kept edges, −1 on the others."""
    out: dict[str, list[int]] = {}
    for cell in ("normal", "reduce"):
        edges = getattr(g, cell)
        path: list[int] = []
        for i in range(len(edges) // 2):
            chosen = {inp: op for op, inp in edges[2 * i:2 * i + 2]}
            for op in chosen.values():
                if op not in ops:
                    raise ConfigError(f"genotype op '{op}' is not in this supernet's space ({', '.join(ops)})")
            path += [ops.index(chosen[j]) if j in chosen else -1 for j in range(node_inputs(i))]
        out[cell] = path
    return out
