"""Ranking the incoming edges of DARTS-cell nodes by their strongest non-zero op.

One rule serves the genotype derivation (keep each node's two strongest edges) and the early
stopping of differentiable searches (has the ranking changed?). Edges are numbered node by
node: node i (from 0) has the 2 + i inputs c_{k-2}, c_{k-1} and the earlier nodes.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from torch import Tensor


class RankedEdge(NamedTuple):
    """One incoming edge of a node: its input index, its strongest non-zero op and that op's score."""

    input: int
    op: int
    strength: float


def rank_edges(scores: Tensor, ops: Sequence[str], steps: int, zero_op: str | None) -> list[list[RankedEdge]]:
    """Per node, its incoming edges strongest first (ties: the lower input first).

    `scores` is E×O (one row per edge); an edge's strength is its highest score over the ops
    other than `zero_op` (ties: the op listed first)."""
    keep = [k for k, o in enumerate(ops) if o != zero_op]
    if not keep:
        raise ValueError("the space has no op besides the zero op")
    rows = scores.tolist()
    nodes: list[list[RankedEdge]] = []
    start = 0
    for i in range(steps):
        edges = []
        for j in range(2 + i):
            row = rows[start + j]
            k = max(keep, key=lambda c, r=row: r[c])
            edges.append(RankedEdge(j, k, row[k]))
        nodes.append(sorted(edges, key=lambda e: -e.strength))
        start += 2 + i
    return nodes
