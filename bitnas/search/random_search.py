"""Random search with weight sharing (Li & Talwalkar, 2019): the control of every NAS result.

1. `epochs` units train the supernet weights, each step on one architecture drawn uniformly
   from the space (two distinct incoming edges per node, a uniform non-zero op on each; the
   other edges are left out), run as a single path (`forward(x, paths=...)`).
2. `random_samples` units each draw one genotype uniformly (seeded) and score it on the whole
   validation split with the shared weights. BatchNorm uses the batch statistics of the scored
   architecture (the running statistics are a mixture over all sampled paths) and running
   statistics are left untouched. The best-scoring genotype is the result.

With `epochs=0` nothing is trained or scored: one unit draws the samples and the result is the
first draw (pure random sampling).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bitnas.common.batchstats import batch_statistics
from bitnas.common.schedules import LRSchedule
from bitnas.data.loader import mix_seed
from bitnas.errors import ConfigError
from bitnas.search.config import SearchConfig
from bitnas.search.steps import Meter, make_weight_optimizer, weight_step
from bitnas.search.sampled import BestOfSamples
from bitnas.search.strategy import STRATEGIES, WEIGHT_KEYS, SearchContext, SearchStrategy
from bitnas.search.supernet import SuperNetwork, fit_partial_ratio, genotype_paths
from bitnas.space.genotypes import Genotype, random_genotype

log = logging.getLogger("bitnas")



class RandomSearch(BestOfSamples, SearchStrategy):
    """Weight-sharing random search; see the module docstring."""

    stateful = ("model", "w_optimizer", "scheduler", "train_loader")
    name = "random"
    default_space = "cpnas"
    reads = WEIGHT_KEYS | {"epochs", "precision", "k_normal", "k_reduce", "random_samples"}

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        kn = fit_partial_ratio(cfg.k_normal or 1, cfg.init_channels)
        kr = fit_partial_ratio(cfg.k_reduce or 1, cfg.init_channels)
        self.model: SuperNetwork = self.build_supernet(cfg.precision, kn, kr, edge_norm=False)
        self.ops = self.model.ops
        self.zero_op = self.space.zero_op
        self.w_params = self.model.weight_parameters()
        self.w_optimizer = make_weight_optimizer(cfg, self.w_params)
        # per epoch, cosine from w_lr to w_lr_min (the schedule training uses, stepped once an epoch)
        self.scheduler = LRSchedule(self.w_optimizer, "cosine", cfg.w_lr, cfg.w_lr_min, cfg.epochs)
        self.train_loader = ctx.loader("train", shuffle=True)
        self.eval_loader = ctx.loader("val", shuffle=False)
        self.path_gen = torch.Generator().manual_seed(mix_seed(cfg.seed, 1))
        self.sample_gen = torch.Generator().manual_seed(mix_seed(cfg.seed, 2))
        self.epoch = 0
        self.samples: list[dict[str, Any]] = []
        self.partial: Meter | None = None
        log.info("random: %d epochs of uniform single-path training, then %d sampled genotypes scored on %d "
                 "validation images", cfg.epochs, cfg.random_samples, len(ctx.val_set))

    @classmethod
    def check_config(cls, cfg: SearchConfig) -> None:
        super().check_config(cfg)
        if cfg.epochs < 0 or cfg.random_samples < 1:
            raise ConfigError(f"random search needs epochs ≥ 0 and random_samples ≥ 1, got {cfg.epochs}, "
                              f"{cfg.random_samples}")

    @property
    def finished(self) -> bool:
        if self.cfg.epochs == 0:
            return bool(self.samples)
        return self.epoch >= self.cfg.epochs and len(self.samples) >= self.cfg.random_samples

    def draw(self, gen: torch.Generator) -> Genotype:
        return random_genotype(self.ops, self.zero_op, gen, self.model.steps, self.model.multiplier)

    def score(self, paths: Callable[[int], dict[str, list[int]]]) -> tuple[float, float]:
        """(loss, accuracy %) on the validation split, batch i run on `paths(i)`."""
        m = Meter()
        with batch_statistics(self.model):
            for i, (x, y) in enumerate(self.eval_loader.iter_from(0)):
                x, y = x.to(self.ctx.device), y.to(self.ctx.device)
                logits = self.model(x, paths=paths(i))[0]
                m.add(F.cross_entropy(logits, y), logits, y)
        self.steps.add_images(len(self.eval_loader.indices()) * self.ctx.world_size)
        return m.result(self.ctx)

    def run_unit(self) -> dict[str, Any]:
        if self.epoch < self.cfg.epochs:
            return self._train_epoch()
        if self.cfg.epochs == 0:
            for i in range(self.cfg.random_samples):
                self.samples.append({"sample": i, "genotype": self.draw(self.sample_gen).to_dict()})
            return {"samples": self.samples, "note": "epochs=0: pure random sampling, the first draw is the result"}
        g = self.draw(self.sample_gen)
        paths = genotype_paths(g, self.ops)
        val_loss, val_acc = self.score(lambda i: paths)
        rec = {"sample": len(self.samples), "genotype": g.to_dict(), "val_loss": val_loss, "val_acc": val_acc}
        self.samples.append(rec)
        log.info("random sample %d/%d: val %.3f / %.2f%%  %s", len(self.samples), self.cfg.random_samples,
                 val_loss, val_acc, g)
        return dict(rec)

    def _train_epoch(self) -> dict[str, Any]:
        ctx, cfg, model = self.ctx, self.cfg, self.model
        lr = self.scheduler.apply()
        model.train()
        self.train_loader.set_epoch(self.epoch)
        if self.partial is None:
            self.partial = Meter()
        m = self.partial
        desc = f"random epoch {self.epoch + 1}/{cfg.epochs}"
        for x, y in self.steps.bar(self.train_loader, desc, len(self.train_loader) - self.train_loader.position):
            x, y = x.to(ctx.device), y.to(ctx.device)
            paths = genotype_paths(self.draw(self.path_gen), self.ops)
            loss, logits = weight_step(ctx, model, self.w_optimizer, self.w_params, x, y, cfg.grad_clip, paths)
            m.add(loss, logits, y)
            self.end_weight_step(y.shape[0], self.train_loader)
        self.partial = None
        self.scheduler.step()
        ctx.broadcast_buffers(model)
        train_loss, train_acc = m.result(ctx)
        eval_gen = torch.Generator().manual_seed(mix_seed(cfg.seed, 3, self.epoch))
        eval_paths = [genotype_paths(self.draw(eval_gen), self.ops) for _ in range(len(self.eval_loader))]
        val_loss, val_acc = self.score(lambda i: eval_paths[i])
        log.info("random epoch %d/%d: train %.3f / %.2f%%, val (random paths) %.3f / %.2f%%, lr %.4g",
                 self.epoch + 1, cfg.epochs, train_loss, train_acc, val_loss, val_acc, lr)
        rec = {"epoch": self.epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "val_note": "mean over a random path per batch"}
        self.epoch += 1
        return rec

    def _best_index(self) -> int:
        if self.cfg.epochs == 0:
            return 0
        return max(range(len(self.samples)), key=lambda i: (self.samples[i]["val_acc"], -i))

    def estimate(self, genotype: Genotype) -> dict[str, float]:
        """Weight-sharing accuracy: the genotype's path in the trained supernet on the whole
        validation split (batch-statistics BatchNorm), as the samples are scored."""
        paths = genotype_paths(genotype, self.ops)
        loss, acc = self.score(lambda i: paths)
        return {"score": acc, "val_loss": loss}

    def result_info(self) -> dict[str, Any]:
        return {"samples": self.samples, "best_sample": self._best_index() if self.samples else None,
                "epochs_run": self.epoch}

    def models(self) -> dict[str, torch.nn.Module]:
        return {"supernet": self.model}

    def state_dict(self) -> dict[str, Any]:
        st = super().state_dict()
        st.update({"path_gen": self.path_gen.get_state(), "sample_gen": self.sample_gen.get_state(),
                   "epoch": self.epoch, "samples": self.samples,
                   "partial": self.partial.state_dict() if self.partial else None})
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.path_gen.set_state(state["path_gen"])
        self.sample_gen.set_state(state["sample_gen"])
        self.epoch = int(state["epoch"])
        self.samples = [dict(s) for s in state["samples"]]
        self.partial = Meter.from_state(state["partial"]) if state.get("partial") else None


STRATEGIES.register("random", RandomSearch, aliases=("random_search",))
