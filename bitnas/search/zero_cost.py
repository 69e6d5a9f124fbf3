"""Zero-cost search: draw `zero_cost_samples` genotypes uniformly from the space, score each one's
fixed network at initialisation with one zero-cost estimator, keep the best (METHODS §7).

No supernet is built or trained. Each candidate is the fixed network the search's settings
describe (`init_channels`, `layers`, `structure`, `activation`, quantizers; cifar style, 1-bit
unless `precision=fp32`), initialised after `torch.manual_seed(seed)` — the network a training
with the same settings and seed starts from — and scored on the same `zero_cost_batches` batches
of the training half of the search's split (`bitnas.study.estimators`). One unit scores one
candidate: metrics.jsonl holds every candidate's genotype and score, genotype.json the best
(ties: the earlier draw). The default estimator, synflow, is the one Abdelfattah et al. found
best on NAS-Bench-201, and the least inverse of the five on the 12 ground-truth genotypes of
the pilot run of `study_fmnist_cpu` (τ −0.23; all five rank them inversely there, see the README).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from bitnas.data.loader import mix_seed
from bitnas.errors import ConfigError
from bitnas.search.config import SearchConfig
from bitnas.search.sampled import BestOfSamples
from bitnas.search.strategy import STRATEGIES, SearchContext, SearchStrategy
from bitnas.space.genotypes import Genotype, random_genotype
from bitnas.study.estimators.protocol import init_network, training_batches
from bitnas.study.estimators.zero_cost import ZERO_COST, get, images_read, score_network

log = logging.getLogger("bitnas")


class ZeroCostSearch(BestOfSamples, SearchStrategy):
    """Random sampling ranked by a zero-cost estimator; see the module docstring."""

    name = "zero_cost"
    default_space = "cpnas"
    reads = frozenset({"precision", "zero_cost_samples", "zero_cost_estimator", "zero_cost_batches"})

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.estimator = ZERO_COST.canonical(cfg.zero_cost_estimator)
        self.batches = training_batches(ctx.train_set, cfg.batch_size, cfg.zero_cost_batches, cfg.seed)
        self.sample_gen = torch.Generator().manual_seed(mix_seed(cfg.seed, 2))
        self.samples: list[dict[str, Any]] = []
        op = self.op_config(cfg.precision)
        self.build_kw: dict[str, Any] = dict(
            style="cifar", precision=op.precision, structure=op.structure, activation=op.activation,
            weight_quantizer=op.weight_quantizer, weight_scale=op.weight_scale, pad_value=op.pad_value,
            binary_preprocess=op.binary_preprocess, init_channels=cfg.init_channels, layers=cfg.layers,
            num_classes=ctx.num_classes, in_channels=ctx.in_channels)
        log.info("zero_cost: %d genotypes scored by %s at initialisation on %d batches of %d training images",
                 cfg.zero_cost_samples, self.estimator, len(self.batches), cfg.batch_size)

    @classmethod
    def check_config(cls, cfg: SearchConfig) -> None:
        super().check_config(cfg)
        if cfg.zero_cost_samples < 1:
            raise ConfigError(f"zero_cost_samples: must be at least 1, got {cfg.zero_cost_samples}")
        try:
            est = get(cfg.zero_cost_estimator)
        except ConfigError as e:
            raise ConfigError(f"zero_cost_estimator: {e}") from None
        if not est.min_batches <= cfg.zero_cost_batches <= 1000:
            raise ConfigError(f"zero_cost_batches: {est.name} needs {est.min_batches}..1000 batches, "
                              f"got {cfg.zero_cost_batches}")

    @property
    def finished(self) -> bool:
        return len(self.samples) >= self.cfg.zero_cost_samples

    def draw(self, gen: torch.Generator) -> Genotype:
        return random_genotype(self.space.ops, self.space.zero_op, gen)

    def score(self, genotype: Genotype) -> float:
        """The estimator's score of `genotype`'s network at initialisation."""
        model = init_network(genotype, self.build_kw, self.cfg.seed).to(self.ctx.device)
        self.steps.add_images(images_read([self.estimator], self.batches))
        return score_network(model, self.batches, [self.estimator])[self.estimator]

    def run_unit(self) -> dict[str, Any]:
        g = self.draw(self.sample_gen)
        rec = {"sample": len(self.samples), "genotype": g.to_dict(), "estimator": self.estimator,
               "score": self.score(g)}
        self.samples.append(rec)
        log.info("zero_cost sample %d/%d: %s %.6g  %s", len(self.samples), self.cfg.zero_cost_samples,
                 self.estimator, rec["score"], g)
        return dict(rec)

    def _best_index(self) -> int:
        return max(range(len(self.samples)), key=lambda i: (self.samples[i]["score"], -i))

    def estimate(self, genotype: Genotype) -> dict[str, float]:
        """The same estimator on `genotype`'s network, as the candidates are scored."""
        return {"score": self.score(genotype)}

    def result_info(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "samples": self.samples,
                "best_sample": self._best_index() if self.samples else None}

    def state_dict(self) -> dict[str, Any]:
        st = super().state_dict()
        st.update({"sample_gen": self.sample_gen.get_state(), "samples": self.samples})
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sample_gen.set_state(state["sample_gen"])
        self.samples = [dict(s) for s in state["samples"]]


STRATEGIES.register("zero_cost", ZeroCostSearch, aliases=("zero-cost", "zerocost"))
