"""CP-NAS's sampling and pruning rounds (see `bitnas.search.cpnas` for the method): which ops every
edge has left, the permutations a round samples them in, the indicator z credited to each sampled
op, and the removal step that drops the lowest-scoring op of every edge. No training here: the
strategy trains and measures the paths this object hands out and reports their z back.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from bitnas.errors import ConfigError
from bitnas.space.edges import edge_position

CELLS = ("normal", "reduce")
INDICATORS = ("printed", "flipped")
SHORT_NAMES = {"none": "0", "skip_connect": "id", "max_pool_3x3": "max", "avg_pool_3x3": "avg",
               "sep_conv_3x3": "s3", "sep_conv_5x5": "s5", "dil_conv_3x3": "d3", "dil_conv_5x5": "d5"}


def indicator(acc_child: float, acc_parent: float, beta_p: float, kind: str = "printed") -> float:
    """The performance indicator z of one sample (Eq. 4.15): printed β_P(A_P − A_C) + A_C, or flipped
    A_C − β_P(A_P − A_C)."""
    gap = acc_parent - acc_child
    if kind == "printed":
        return beta_p * gap + acc_child
    if kind == "flipped":
        return acc_child - beta_p * gap
    raise ConfigError(f"indicator must be one of {', '.join(INDICATORS)}, got {kind!r}")


def edge_scores(z_mean: Sequence[float], temperature: float = 1.0) -> list[float]:
    """e(·) = softmax(z̄ / τ) over one edge's remaining ops."""
    return torch.softmax(torch.tensor(z_mean, dtype=torch.float64) / temperature, dim=0).tolist()


def removal_choice(ops: Sequence[int], z_mean: Sequence[float], zero: int | None, first_step: bool,
                   drop_zero_first: bool) -> tuple[int, str]:
    """(op index to remove, reason) on one edge with remaining `ops` and their z̄.

    The lowest z̄ (= lowest e(·)) goes, ties to the lowest op index; the zero op goes instead when
    it would otherwise survive alone, or at the first step with `drop_zero_first`.
    """
    if zero is not None and zero in ops:
        if drop_zero_first and first_step:
            return zero, "drop_zero_first"
        if len(ops) == 2:
            return zero, "zero_never_survives"
    low = min(range(len(ops)), key=lambda i: (z_mean[i], ops[i]))
    return ops[low], "lowest_score"


def short_name(op: str) -> str:
    """A compact op name for log lines."""
    return SHORT_NAMES.get(op, op)


class PruningRounds:
    """The sampling state of a CP-NAS search: `rounds` (T) rounds of K samples, then one removal.

    gen: the generator every draw (permutations, warm-up paths) comes from; its state is saved
    by the strategy.
    """

    def __init__(self, ops: Sequence[str], zero: int | None, num_edges: int, rounds: int,
                 gen: torch.Generator) -> None:
        self.ops, self.zero, self.num_edges, self.rounds, self.gen = list(ops), zero, num_edges, rounds, gen
        n_ops = len(self.ops)
        self.remaining = {c: [list(range(n_ops)) for _ in range(num_edges)] for c in CELLS}
        self.perms: dict[str, list[list[int]]] | None = None
        self.z_sum = {c: torch.zeros(num_edges, n_ops, dtype=torch.float64) for c in CELLS}
        self.z_count = {c: torch.zeros(num_edges, n_ops, dtype=torch.int64) for c in CELLS}
        self.last_e = {c: torch.full((num_edges, n_ops), float("nan"), dtype=torch.float64) for c in CELLS}
        self.removals = 0
        self.round = 0
        self.sample = 0
        self.samples_done = 0
        self.pending_removal = False
        self.stats = {"acc_child": 0.0, "acc_parent": 0.0, "n": 0, "seconds": 0.0}
        self.history: list[dict[str, Any]] = []

    @property
    def ops_left(self) -> int:
        """K: the number of ops left on every edge."""
        return len(self.remaining["normal"][0])

    # -- drawing paths -----------------------------------------------------------------------
    def random_path(self) -> dict[str, list[int]]:
        """A uniformly random op per edge among its remaining ops (warm-up)."""
        out = {}
        for c in CELLS:
            draws = torch.randint(0, 1 << 30, (self.num_edges,), generator=self.gen).tolist()
            out[c] = [rem[d % len(rem)] for rem, d in zip(self.remaining[c], draws)]
        return out

    def _draw_permutations(self) -> dict[str, list[list[int]]]:
        """Every edge's remaining ops in a fresh random order (sampling without replacement)."""
        return {c: [[rem[i] for i in torch.randperm(len(rem), generator=self.gen).tolist()]
                    for rem in self.remaining[c]] for c in CELLS}

    def next_paths(self) -> dict[str, list[int]]:
        """The single path of the next sample: the e-th op of every edge's permutation of this round."""
        if self.perms is None:
            self.perms = self._draw_permutations()
        return {c: [self.perms[c][edge][self.sample] for edge in range(self.num_edges)] for c in CELLS}

    # -- scoring and removal ---------------------------------------------------------------
    def credit(self, paths: dict[str, list[int]], z: float, acc_child: float, acc_parent: float) -> None:
        """Credit the sample's z to every op of its path and advance to the next sample (a removal
        becomes pending after the round's T-th pass)."""
        for c in CELLS:
            for edge, op in enumerate(paths[c]):
                self.z_sum[c][edge, op] += z
                self.z_count[c][edge, op] += 1
        self.stats["acc_child"] += acc_child
        self.stats["acc_parent"] += acc_parent
        self.stats["n"] += 1
        self.samples_done += 1
        self.sample += 1
        if self.sample == self.ops_left:
            self.sample = 0
            self.perms = None
            self.round += 1
            if self.round == self.rounds:
                self.round = 0
                self.pending_removal = True

    def remove(self, temperature: float, drop_zero_first: bool) -> dict[str, Any]:
        """Drop the lowest-scoring op of every edge; returns the removal record (also kept in `history`)."""
        k = self.ops_left
        first = self.removals == 0
        edges: dict[str, list[dict[str, Any]]] = {}
        for c in CELLS:
            edges[c] = []
            for edge, rem in enumerate(self.remaining[c]):
                counts = self.z_count[c][edge, rem]
                if not bool((counts == self.rounds).all()):
                    raise RuntimeError(f"cpnas: {c} edge {edge} scored {counts.tolist()} times, expected {self.rounds}")
                z_mean = (self.z_sum[c][edge, rem] / counts).tolist()
                e = edge_scores(z_mean, temperature)
                victim, reason = removal_choice(rem, z_mean, self.zero, first, drop_zero_first)
                self.last_e[c][edge].fill_(float("nan"))
                self.last_e[c][edge, rem] = torch.tensor(e, dtype=torch.float64)
                edges[c].append({"edge": edge, "input": edge_position(edge)[0], "node": edge_position(edge)[1],
                                 "ops": [self.ops[i] for i in rem], "z_mean": z_mean, "e": e,
                                 "removed": self.ops[victim], "reason": reason})
                self.remaining[c][edge] = [i for i in rem if i != victim]
            self.z_sum[c].zero_()
            self.z_count[c].zero_()
        n = max(1, self.stats["n"])
        rec: dict[str, Any] = {
            "kind": "removal", "removal_step": self.removals, "K_before": k, "K_after": k - 1,
            "acc_child_mean": self.stats["acc_child"] / n, "acc_parent_mean": self.stats["acc_parent"] / n,
            "samples": self.stats["n"], "step_seconds": self.stats["seconds"], "edges": edges,
        }
        self.history.append(rec)
        self.removals += 1
        self.pending_removal = False
        self.stats = {"acc_child": 0.0, "acc_parent": 0.0, "n": 0, "seconds": 0.0}
        return rec

    # -- results ---------------------------------------------------------------------------
    def scores(self, cell: str) -> Tensor:
        """E×O derivation scores: latest e(·) of the remaining ops (uniform before any removal), −inf elsewhere."""
        s = torch.full((self.num_edges, len(self.ops)), float("-inf"), dtype=torch.float64)
        for edge, rem in enumerate(self.remaining[cell]):
            for i in rem:
                v = float(self.last_e[cell][edge, i])
                s[edge, i] = v if not math.isnan(v) else 1.0 / len(rem)
        return s

    def survivors(self) -> dict[str, list[list[str]]]:
        """The ops still left on every edge."""
        return {c: [[self.ops[i] for i in rem] for rem in self.remaining[c]] for c in CELLS}

    # -- exact resume ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "remaining": self.remaining, "perms": self.perms,
            "z_sum": {c: t.clone() for c, t in self.z_sum.items()},
            "z_count": {c: t.clone() for c, t in self.z_count.items()},
            "last_e": {c: t.clone() for c, t in self.last_e.items()},
            "removals": self.removals, "round": self.round, "sample": self.sample,
            "samples_done": self.samples_done, "pending_removal": self.pending_removal,
            "stats": dict(self.stats), "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.remaining = {c: [[int(i) for i in rem] for rem in state["remaining"][c]] for c in CELLS}
        perms = state["perms"]
        self.perms = None if perms is None else {c: [[int(i) for i in p] for p in perms[c]] for c in CELLS}
        for name in ("z_sum", "z_count", "last_e"):
            getattr(self, name).update({c: state[name][c].clone() for c in CELLS})
        self.removals = int(state["removals"])
        self.round, self.sample = int(state["round"]), int(state["sample"])
        self.samples_done = int(state["samples_done"])
        self.pending_removal = bool(state["pending_removal"])
        self.stats = dict(state["stats"])
        self.history = list(state["history"])
