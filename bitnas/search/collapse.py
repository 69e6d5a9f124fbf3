"""Remedies against the collapse of differentiable binary searches to parameter-free cells.

Binary PC-DARTS and UBNAS returned all-pooling cells in the pilot run of `study_fmnist_cpu` — the
failure BATS and BARS describe for binary differentiable search (METHODS §7). Two published remedies, each
an option of the shared DARTS loop whose default is the unchanged search:

- **A cap on parameter-free ops per cell** at genotype derivation (P-DARTS, DARTS+: at most M
  skip connections, M = 2), generalised to every parameter-free op (skip and pooling), as the
  binary cells here collapse to pooling rather than to skips. `max_param_free_ops = N`: after
  the DARTS derivation (each node keeps its 2 strongest incoming edges), while a cell's kept
  edges hold more than N parameter-free ops, the parameter-free choice with the smallest margin
  log s(o_free) − log s(o_param) — o_param the strongest parametric op of the same edge, s the
  derivation strength (softmax(α/T), times the normalised β with edge normalisation, which
  cancels in the margin) — is replaced by o_param. The kept edges stay the same; ties go to the
  earlier edge. Applied to normal and reduction cells alike. −1 = no cap.
- **Temperature of the architecture softmax** (BATS: a temperature on the softmax over α,
  annealed during the search): op weights softmax(α / T(s)) at weight/α step s of the search,
  T from `alpha_temperature` (T0) to `alpha_temperature_end` (T1) over all S steps of the
  search (warm-up included), exponential T0·(T1/T0)^p or linear T0 + (T1 − T0)·p with
  p = s / (S − 1). T applies to α only, not to the edge-normalisation β.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from bitnas.space.genotypes import is_parametric

SCHEDULES = ("exponential", "linear")

# A kept edge of a cell being derived: (row of the score matrix, op index, input node).
KeptEdge = tuple[int, int, int]


def cap_param_free(kept: list[KeptEdge], scores: Tensor, ops: Sequence[str], cap: int) -> list[KeptEdge]:
    """`kept` with at most `cap` parameter-free ops: the weakest-margin parameter-free choices
    are replaced by their edge's strongest parametric op (module docstring). `cap` < 0: unchanged.
    Edges without a parametric op of positive strength cannot be replaced and are passed over."""
    if cap < 0:
        return kept
    free = [n for n, (_, op, _) in enumerate(kept) if not is_parametric(ops[op])]
    excess = len(free) - cap
    param = [k for k, o in enumerate(ops) if is_parametric(o)]
    if excess <= 0 or not param:
        return kept
    rows = scores.tolist()
    candidates: list[tuple[float, int, int]] = []
    for n in free:
        row, op, _ = kept[n]
        r = rows[row]
        best = max(param, key=lambda k, r=r: r[k])  # ties: the op listed first
        if r[best] > 0 and r[op] > 0:
            candidates.append((math.log(r[op]) - math.log(r[best]), n, best))
    out = list(kept)
    for _, n, best in sorted(candidates)[:excess]:
        row, _, inp = out[n]
        out[n] = (row, best, inp)
    return out


@dataclass(frozen=True)
class TemperatureSchedule:
    """T(s) of the architecture softmax at step s of a search of `steps` steps (module docstring)."""

    start: float = 1.0
    end: float = 1.0
    kind: str = "exponential"
    steps: int = 1

    @property
    def constant(self) -> bool:
        return self.start == self.end or self.steps <= 1

    def at(self, step: int) -> float:
        """T at step `step` (clamped to the search: T0 before the first step, T1 from the last on)."""
        if self.constant:
            return self.start
        if step >= self.steps - 1:
            return self.end
        p = max(step, 0) / (self.steps - 1)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        return self.start * (self.end / self.start) ** p
