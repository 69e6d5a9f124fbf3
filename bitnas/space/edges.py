"""The one place that numbers the edges of a DARTS cell, and ranks a node's incoming edges.

A cell has two input states (c_{k-2}, c_{k-1}: states 0 and 1) and `steps` intermediate nodes;
node i (from 0) is state i + 2 and has the 2 + i inputs c_{k-2}, c_{k-1} and the earlier nodes.
Edges are numbered node by node, inputs in order: node 0's edges are 0, 1; node 1's 2, 3, 4; …
(14 edges for 4 nodes). The cell's output concatenates the last `multiplier` states.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from torch import Tensor


def node_inputs(node: int) -> int:
    """Incoming edges of intermediate node `node` (from 0)."""
    return 2 + node


def node_state(node: int) -> int:
    """The state index of intermediate node `node` (states 0 and 1 are the cell's inputs)."""
    return node + 2


def num_edges(steps: int) -> int:
    return sum(node_inputs(i) for i in range(steps))


def node_edges(steps: int) -> list[range]:
    """The edge numbers of each node's incoming edges, node by node."""
    out, start = [], 0
    for i in range(steps):
        out.append(range(start, start + node_inputs(i)))
        start += node_inputs(i)
    return out


def edge_position(edge: int) -> tuple[int, int]:
    """(input state, node state) of edge number `edge`: inputs 0 = c_{k-2}, 1 = c_{k-1}, 2… earlier
    nodes; node states are numbered from 2."""
    node = 0
    while edge >= node_inputs(node):
        edge -= node_inputs(node)
        node += 1
    return edge, node_state(node)


def steps_for(edges: int) -> int:
    """The number of intermediate nodes of a cell with `edges` edges (ValueError if none fits)."""
    steps = 0
    while num_edges(steps) < edges:
        steps += 1
    if num_edges(steps) != edges:
        raise ValueError(f"{edges} edges is not a DARTS cell (2 + 3 + … edges)")
    return steps


def concat_range(steps: int, multiplier: int) -> tuple[int, ...]:
    """The states a cell concatenates into its output: the last `multiplier` of them."""
    return tuple(range(node_state(steps) - multiplier, node_state(steps)))


class RankedEdge(NamedTuple):
    """One incoming edge of a node: its input index, its strongest non-zero op and that op's score."""

    input: int
    op: int
    strength: float


def rank_edges(scores: Tensor, ops: Sequence[str], steps: int, zero_op: str | None) -> list[list[RankedEdge]]:
    """Per node, its incoming edges strongest first (ties: the lower input first). One rule serves
    the genotype derivation (keep each node's two strongest edges) and the early stopping of
    differentiable searches (has the ranking changed?).

    `scores` is E×O (one row per edge); an edge's strength is its highest score over the ops
    other than `zero_op` (ties: the op listed first)."""
    keep = [k for k, o in enumerate(ops) if o != zero_op]
    if not keep:
        raise ValueError("the space has no op besides the zero op")
    rows = scores.tolist()
    nodes: list[list[RankedEdge]] = []
    for edges in node_edges(steps):
        ranked = []
        for j, e in enumerate(edges):
            k = max(keep, key=lambda c, r=rows[e]: r[c])
            ranked.append(RankedEdge(j, k, rows[e][k]))
        nodes.append(sorted(ranked, key=lambda r: -r.strength))
    return nodes
