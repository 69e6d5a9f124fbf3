"""Early stopping of differentiable searches (UBNAS, METHODS §4.3).

Criteria, checked after every epoch in which α was updated (past warm-up):

- `skip` (DARTS+): the derived normal cell holds at least `skips` skip connections.
- `stable` (DARTS+): the α ranking — the strongest non-zero op of every edge and the order of
  every node's incoming edges by that strength — has not changed for `patience` epochs.
- `genotype`: the derived genotype has not changed for `patience` epochs: it differs from each
  of the last `patience` epochs' genotypes in at most `tolerance` edges (`genotype_distance`,
  normal and reduction cell; tolerance 0 = identical, the last P+1 genotypes equal).
- `any`: the first of them to fire (checked in the order skip, stable, genotype).

"Unchanged for P epochs" means the last P+1 observations are equal (within the tolerance for
`genotype`). No criterion fires before `min_epochs` α-updating epochs have been observed. Every
α epoch's distance to the previous epoch's genotype is kept in `changes` (the search records it
as `genotype_changes`), whether or not a criterion is enabled.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from bitnas.space.edges import rank_edges
from bitnas.space.genotypes import Genotype

CRITERIA = ("skip", "stable", "genotype")
CHOICES = ("none",) + CRITERIA + ("any",)

Ranking = list[list[int]]


def ranking(scores: Tensor, ops: Sequence[str], steps: int, zero_op: str | None) -> Ranking:
    """Per edge the index of its strongest non-zero op, then per node its edges by that strength."""
    nodes = rank_edges(scores, ops, steps, zero_op)
    best_op = [e.op for node in nodes for e in sorted(node, key=lambda e: e.input)]
    order = [e.input for node in nodes for e in node]
    return [best_op, order]


def genotype_distance(a: dict[str, Any], b: dict[str, Any]) -> int:
    """Kept edges (normal and reduction cell, 2 per node) whose (op, input) differ between two
    genotypes (as `Genotype.to_dict()`)."""
    return sum(x != y for cell in ("normal", "reduce") for x, y in zip(a[cell], b[cell]))


def count_skips(genotype: Genotype, skip_op: str = "skip_connect") -> int:
    """Skip connections in the normal cell."""
    return sum(1 for op, _ in genotype.normal if op == skip_op)


class EarlyStopping:
    """Decides when a search may stop; all state is JSON/torch-checkpoint friendly."""

    def __init__(self, criterion: str, skips: int = 2, patience: int = 3, min_epochs: int = 0,
                 skip_op: str = "skip_connect", tolerance: int = 0) -> None:
        if criterion not in CHOICES:
            raise ValueError(f"early stopping criterion '{criterion}' unknown; known: {', '.join(CHOICES)}")
        if patience < 1:
            raise ValueError(f"early_stop_patience must be at least 1, got {patience}")
        if tolerance < 0:
            raise ValueError(f"early_stop_tolerance must be >= 0, got {tolerance}")
        self.criterion = criterion
        self.skips = skips
        self.patience = patience
        self.min_epochs = min_epochs
        self.skip_op = skip_op
        self.tolerance = tolerance
        self.observed = 0
        self.changes: int | None = None
        self.rankings: list[dict[str, Ranking]] = []
        self.genotypes: list[dict[str, Any]] = []
        self.reason = ""
        self.detail = ""

    @property
    def enabled(self) -> bool:
        return self.criterion != "none"

    def _active(self, name: str) -> bool:
        return self.criterion in (name, "any")

    @staticmethod
    def _unchanged_for(history: list[Any]) -> int:
        """Number of most recent consecutive epochs whose observation equals the previous one."""
        n = 0
        for k in range(len(history) - 1, 0, -1):
            if history[k] != history[k - 1]:
                break
            n += 1
        return n

    def _genotype_settled(self) -> bool:
        """The current genotype is within `tolerance` edges of each of the last `patience` ones."""
        if len(self.genotypes) < self.patience + 1:
            return False
        now = self.genotypes[-1]
        return all(genotype_distance(now, g) <= self.tolerance for g in self.genotypes[:-1])

    def update(self, rank: dict[str, Ranking], genotype: Genotype) -> str:
        """Record one α-updating epoch; return the criterion that has fired ('' while none has)."""
        self.observed += 1
        keep = self.patience + 1
        g = genotype.to_dict()
        self.changes = genotype_distance(g, self.genotypes[-1]) if self.genotypes else None
        self.rankings = (self.rankings + [rank])[-keep:]
        self.genotypes = (self.genotypes + [g])[-keep:]
        if self.reason or not self.enabled or self.observed < self.min_epochs:
            return self.reason
        skips = count_skips(genotype, self.skip_op)
        if self._active("skip") and skips >= self.skips:
            self.reason, self.detail = "skip", f"the normal cell holds {skips} skip connections (≥ {self.skips})"
        elif self._active("stable") and self._unchanged_for(self.rankings) >= self.patience:
            self.reason, self.detail = "stable", f"the α ranking has not changed for {self.patience} epoch(s)"
        elif self._active("genotype") and self._genotype_settled():
            within = f" beyond {self.tolerance} edge(s)" if self.tolerance else ""
            self.reason, self.detail = "genotype", (f"the derived genotype has not changed{within} for "
                                                    f"{self.patience} epoch(s)")
        return self.reason

    def state_dict(self) -> dict[str, Any]:
        return {"observed": self.observed, "rankings": self.rankings, "genotypes": self.genotypes,
                "reason": self.reason, "detail": self.detail, "changes": self.changes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observed = int(state["observed"])
        self.rankings = [dict(r) for r in state["rankings"]]
        self.genotypes = [dict(g) for g in state["genotypes"]]
        self.reason = str(state["reason"])
        self.detail = str(state["detail"])
        self.changes = state.get("changes")
