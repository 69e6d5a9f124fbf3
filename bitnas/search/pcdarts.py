"""PC-DARTS (Xu et al., ICLR 2020): partial channels, edge normalisation, warm-up (METHODS §4.2).

Only C/K channels of each edge (K = 4 in normal and reduction cells) go through the candidate
ops; the rest bypass (max-pooled on reduction edges) and channels are shuffled in K groups.
β per incoming edge, softmaxed over each node's edges, scales the edge and ranks edges for the
genotype (by β·softmax(α)). α/β are not updated during the first 30 % of the epochs (15 of 50 in
the paper). Adam lr 6e-4, weight decay 1e-3 on α/β.
"""
from __future__ import annotations

from bitnas.search.darts import Defaults, DifferentiableSearch
from bitnas.search.strategy import STRATEGIES


class PCDartsSearch(DifferentiableSearch):
    """DARTS loop with the PC-DARTS defaults."""

    name = "pcdarts"
    default_space = "darts"
    defaults = Defaults(k=(4, 4), edge_norm=True, warmup_fraction=0.3, arch_lr=6e-4)


STRATEGIES.register("pcdarts", PCDartsSearch, aliases=("pc-darts", "pc_darts"))
