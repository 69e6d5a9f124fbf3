"""Strategies that score sampled genotypes and keep the best (random search, zero-cost search)."""
from __future__ import annotations

from typing import Any

import torch

from bitnas.space.genotypes import Genotype


class BestOfSamples:
    """Mixin: `samples` holds the scored candidates (each with its `genotype`); the strategy's
    genotype is the best one by `_best_index`, or, before any is scored, what the next draw of
    `sample_gen` would give (without advancing it)."""

    samples: list[dict[str, Any]]
    sample_gen: torch.Generator

    def draw(self, gen: torch.Generator) -> Genotype:
        raise NotImplementedError

    def _best_index(self) -> int:
        raise NotImplementedError

    def genotype(self) -> Genotype:
        if not self.samples:
            return self.draw(torch.Generator().set_state(self.sample_gen.get_state()))
        return Genotype.from_dict(self.samples[self._best_index()]["genotype"])

    def best_genotype(self) -> Genotype | None:
        return self.genotype() if self.samples else None
