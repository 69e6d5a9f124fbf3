"""The fixed DARTS cell built from a genotype, in either precision."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bitnas.space.config import OpConfig
from bitnas.space.genotypes import Edge
from bitnas.space.operations import FactorizedReduce, ReLUConvBN, build_op, forward_plus


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole samples with probability drop_prob and rescale the rest (DARTS)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    """Two preprocessed inputs, `steps` nodes each summing two ops, concat of `concat` nodes."""

    def __init__(self, edges: tuple[Edge, ...], concat: tuple[int, ...], c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool, cfg: OpConfig) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(c_pp, c, cfg) if reduction_prev else ReLUConvBN(c_pp, c, cfg)
        self.preprocess1 = ReLUConvBN(c_p, c, cfg)
        self.steps = len(edges) // 2
        self.concat = tuple(concat)
        self.multiplier = len(concat)
        self.indices = tuple(i for _, i in edges)
        self.op_names = tuple(o for o, _ in edges)
        self.ops = nn.ModuleList(
            build_op(name, c, 2 if reduction and idx < 2 else 1, cfg) for name, idx in edges
        )

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            if self.training and drop_prob > 0:
                total: Tensor | None = None
                for j in (2 * i, 2 * i + 1):
                    h = self.ops[j](states[self.indices[j]])
                    if not isinstance(self.ops[j], nn.Identity):
                        h = drop_path(h, drop_prob)
                    total = h if total is None else total + h  # no `0 + h` pass over the first term
                states.append(total)
                continue
            a, b = 2 * i, 2 * i + 1
            if isinstance(self.ops[b], nn.Identity):  # the identity's term added in op a's last pass
                states.append(forward_plus(self.ops[a], states[self.indices[a]], states[self.indices[b]]))
            else:  # op a first as before, its output added in op b's last pass
                h = self.ops[a](states[self.indices[a]])
                states.append(forward_plus(self.ops[b], states[self.indices[b]], h))
        return torch.cat([states[i] for i in self.concat], dim=1)
