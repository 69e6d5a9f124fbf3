"""DARTS (Liu et al., ICLR 2019) and the shared loop of every differentiable strategy.

One unit = one epoch over the train split: for each batch, one α/β step on the next batch of a
persistent validation stream (skipped during warm-up), then one SGD step of the weights (cosine
lr, momentum, weight decay, gradient clipping). After the epoch: evaluation on the whole
validation split, the derived genotype, best-epoch tracking and (if enabled) early stopping.

Collapse remedies (`collapse.py`, all off by default): `max_param_free_ops` caps the
parameter-free ops of every derived cell; `alpha_temperature`/`alpha_temperature_end`/
`alpha_temperature_schedule` set the temperature of the op softmax at every step (recorded per
epoch as `alpha_temperature`: the value the epoch's α, genotype and validation used).

Multi-process: every gradient is averaged over ranks before it is applied (`ctx.sync_grads`),
so α and the weights stay bitwise identical on all ranks; BatchNorm statistics are broadcast
from rank 0 at the end of each epoch.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bitnas.common import faults
from bitnas.common.schedules import LRSchedule
from bitnas.data import InfiniteLoader
from bitnas.errors import ConfigError
from bitnas.search.architect import Architect
from bitnas.search.collapse import TemperatureSchedule
from bitnas.search.config import SearchConfig
from bitnas.search.early_stopping import EarlyStopping, ranking
from bitnas.search.steps import Meter, evaluate, make_weight_optimizer, weight_step
from bitnas.search.strategy import STRATEGIES, WEIGHT_KEYS, SearchContext, SearchStrategy
from bitnas.search.supernet import fit_partial_ratio, genotype_paths
from bitnas.space.genotypes import Genotype

log = logging.getLogger("bitnas")


def nested(t: Tensor) -> list[Any]:
    return t.detach().cpu().tolist()


@dataclass(frozen=True)
class Defaults:
    """What a differentiable strategy uses for the keys left at `auto` / 0 / -1: partial-channel ratio
    K (normal, reduce), edge normalisation, warm-up as a fraction of the epochs, α learning rate and
    early-stopping criterion. DARTS' own values; PC-DARTS and UBNAS change some of them."""

    k: tuple[int, int] = (1, 1)
    edge_norm: bool = False
    warmup_fraction: float = 0.0
    arch_lr: float = 3e-4
    early_stop: str = "none"


class DifferentiableSearch(SearchStrategy):
    """DARTS-family search: bilevel α/weight optimisation of a (partial-channel) supernet."""

    stateful = ("model", "w_optimizer", "scheduler", "architect", "train_loader", "val_stream", "stopper")
    name = "darts"
    default_space = "darts"
    reads = WEIGHT_KEYS | {
        "epochs", "precision", "arch_lr", "arch_beta1", "arch_beta2", "arch_weight_decay", "unrolled", "arch_fd_scale",
        "k_normal", "k_reduce", "edge_norm", "warmup_epochs", "early_stop", "early_stop_skips",
        "early_stop_patience", "early_stop_min_epochs", "early_stop_tolerance", "max_param_free_ops",
        "alpha_temperature", "alpha_temperature_end", "alpha_temperature_schedule"}
    defaults = Defaults()

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        d = self.defaults
        self.k_normal = self._partial_ratio(cfg.k_normal or d.k[0], "k_normal")
        self.k_reduce = self._partial_ratio(cfg.k_reduce or d.k[1], "k_reduce")
        self.edge_norm = d.edge_norm if cfg.edge_norm == "auto" else cfg.edge_norm == "on"
        self.warmup = (int(d.warmup_fraction * cfg.epochs + 0.5) if cfg.warmup_epochs < 0
                       else cfg.warmup_epochs)
        self.arch_lr = cfg.arch_lr or d.arch_lr
        self.model = self.build_supernet(cfg.precision, self.k_normal, self.k_reduce, self.edge_norm)
        self.model.max_param_free = cfg.max_param_free_ops
        self.w_params = self.model.weight_parameters()
        self.w_optimizer = make_weight_optimizer(cfg, self.w_params)
        # per epoch, cosine from w_lr to w_lr_min (the schedule training uses, stepped once an epoch)
        self.scheduler = LRSchedule(self.w_optimizer, "cosine", cfg.w_lr, cfg.w_lr_min, cfg.epochs)
        self.architect = Architect(self.model, self.arch_lr, (cfg.arch_beta1, cfg.arch_beta2),
                                   cfg.arch_weight_decay, average=ctx.average, fd_scale=cfg.arch_fd_scale,
                                   world_size=ctx.world_size)
        self.train_loader = ctx.loader("train", shuffle=True)
        self.val_stream = InfiniteLoader(ctx.loader("val", shuffle=True, seed_offset=1))
        self.eval_loader = ctx.loader("val", shuffle=False)
        t0, t1 = cfg.alpha_temperature, cfg.alpha_temperature_end or cfg.alpha_temperature
        self.temperature = TemperatureSchedule(t0, t1, cfg.alpha_temperature_schedule,
                                               cfg.epochs * len(self.train_loader))
        self.model.temperature = self.temperature.at(0)
        criterion = d.early_stop if cfg.early_stop == "auto" else cfg.early_stop
        self.stopper = EarlyStopping(criterion, cfg.early_stop_skips, cfg.early_stop_patience,
                                     cfg.early_stop_min_epochs, tolerance=cfg.early_stop_tolerance)
        self.epoch = 0
        self.stop_epoch = -1
        self.best_acc = float("-inf")
        self.best_epoch = -1
        self.best: Genotype | None = None
        self.partial: dict[str, Meter] | None = None
        log.info("%s: K normal %d / reduce %d, edge normalisation %s, warm-up %d of %d epochs, arch lr %g, "
                 "%s order, precision %s, early stopping %s, α temperature %s, parameter-free ops per cell %s",
                 self.name, self.k_normal, self.k_reduce, "on" if self.edge_norm else "off", self.warmup, cfg.epochs,
                 self.arch_lr, "second" if cfg.unrolled else "first", cfg.precision, criterion,
                 self._temperature_text(), "≤ %d" % cfg.max_param_free_ops if cfg.max_param_free_ops >= 0 else "any")

    @classmethod
    def check_config(cls, cfg: SearchConfig) -> None:
        super().check_config(cfg)
        if cfg.epochs < 1:
            raise ConfigError(f"epochs: a {cls.name} search needs at least 1 epoch, got {cfg.epochs}")
        if cfg.warmup_epochs >= cfg.epochs:
            raise ConfigError(f"warmup_epochs: {cfg.warmup_epochs} of {cfg.epochs} epochs would leave α never updated")
        if cfg.unrolled and cfg.w_optimizer != "sgd":
            raise ConfigError("unrolled (second-order) search needs w_optimizer: sgd")

    def _temperature_text(self) -> str:
        t = self.temperature
        return f"{t.start:g}" if t.constant else f"{t.start:g} → {t.end:g} ({t.kind}, {t.steps} steps)"

    def _partial_ratio(self, k: int, what: str) -> int:
        fitted = fit_partial_ratio(k, self.cfg.init_channels)
        if fitted != k:
            log.warning("%s=%d does not divide init_channels=%d; using K=%d (the largest divisor ≤ %d)",
                        what, k, self.cfg.init_channels, fitted, k)
        return fitted

    # -- the loop -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs or bool(self.stop_reason)

    def run_unit(self) -> dict[str, Any]:
        ctx, cfg, model = self.ctx, self.cfg, self.model
        update_arch = self.epoch >= self.warmup
        lr = self.scheduler.apply()
        model.train()
        self.train_loader.set_epoch(self.epoch)
        if self.partial is None:
            self.partial = {"train": Meter(), "arch": Meter()}
        train_m, arch_m = self.partial["train"], self.partial["arch"]
        batches = self.steps.bar(self.train_loader, f"{self.name} epoch {self.epoch + 1}/{cfg.epochs}",
                           len(self.train_loader) - self.train_loader.position)
        for x, y in batches:
            x, y = x.to(ctx.device), y.to(ctx.device)
            model.temperature = self.temperature.at(self.step)
            if update_arch:
                xv, yv = next(self.val_stream)
                xv, yv = xv.to(ctx.device), yv.to(ctx.device)
                vloss, vlogits = self.architect.step((x, y), (xv, yv), lr, self.w_optimizer, cfg.unrolled)
                arch_m.add(vloss, vlogits, yv)
                self.steps.add_images(yv.shape[0] * ctx.world_size)
                faults.point("search.arch_step", self.step + 1, tensors=model.arch_parameters)
            loss, logits = weight_step(ctx, model, self.w_optimizer, self.w_params, x, y, cfg.grad_clip)
            train_m.add(loss, logits, y)
            self.end_weight_step(y.shape[0], self.train_loader)
        self.partial = None
        model.temperature = self.temperature.at(self.step - 1)
        self.scheduler.step()
        ctx.broadcast_buffers(model)
        train_loss, train_acc = train_m.result(ctx)
        val_loss, val_acc = evaluate(ctx, model, self.eval_loader)
        self.steps.add_images(len(self.eval_loader.indices()) * ctx.world_size)
        g = model.genotype()
        rec: dict[str, Any] = {
            "epoch": self.epoch, "lr": lr, "arch_updates": update_arch, "alpha_temperature": model.temperature,
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
        }
        if update_arch:
            rec["arch_val_loss"], rec["arch_val_acc"] = arch_m.result(ctx)
        rec["alphas"] = {k: nested(v) for k, v in model.arch_weights().items()}
        rec["genotype"] = g.to_dict()
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.best = val_acc, self.epoch, g
        rec["best_epoch"] = self.best_epoch
        if update_arch:
            n, r = model.edge_strengths()
            ops, steps, zero = model.ops, model.steps, model.space.zero_op
            ranks = {"normal": ranking(n, ops, steps, zero), "reduce": ranking(r, ops, steps, zero)}
            reason = self.stopper.update(ranks, g)
            rec["genotype_changes"] = self.stopper.changes
            if reason:
                self.stop_reason, self.stop_epoch = f"early_stop:{reason}", self.epoch
                rec.update(stop_reason=self.stop_reason, stop_epoch=self.epoch, stop_detail=self.stopper.detail)
                log.info("%s: early stop after epoch %d: %s", self.name, self.epoch + 1, self.stopper.detail)
        log.info("%s epoch %d/%d: train %.3f / %.2f%%, val %.3f / %.2f%%, lr %.4g%s", self.name, self.epoch + 1,
                 cfg.epochs, train_loss, train_acc, val_loss, val_acc, lr, "" if update_arch else " (warm-up)")
        log.info("genotype: %s", g)
        self.epoch += 1
        return rec

    # -- results --------------------------------------------------------------------------
    def genotype(self) -> Genotype:
        return self.model.genotype()

    def best_genotype(self) -> Genotype | None:
        return self.best

    def estimate(self, genotype: Genotype) -> dict[str, float]:
        """α-based: the mean log strength (softmax(α), times the normalised β with edge
        normalisation) of the genotype's edges — the quantity its derivation maximises edge by edge."""
        strengths = dict(zip(("normal", "reduce"), self.model.edge_strengths()))
        paths = genotype_paths(genotype, self.model.ops)
        logs = [math.log(max(float(strengths[c][e, op]), 1e-300)) for c in ("normal", "reduce")
                for e, op in enumerate(paths[c]) if op >= 0]
        return {"score": sum(logs) / len(logs)}

    def result_info(self) -> dict[str, Any]:
        return {"epochs_run": self.epoch, "stop_epoch": self.stop_epoch if self.stop_epoch >= 0 else None,
                "stop_detail": self.stopper.detail or None, "best_epoch": self.best_epoch,
                "best_val_acc": self.best_acc if self.best_epoch >= 0 else None,
                "alphas": {k: nested(v) for k, v in self.model.arch_weights().items()},
                "settings": {"k_normal": self.k_normal, "k_reduce": self.k_reduce, "edge_norm": self.edge_norm,
                             "warmup_epochs": self.warmup, "arch_lr": self.arch_lr, "unrolled": self.cfg.unrolled,
                             "precision": self.cfg.precision, "early_stop": self.stopper.criterion,
                             "max_param_free_ops": self.cfg.max_param_free_ops,
                             "alpha_temperature": [self.temperature.start, self.temperature.end],
                             "alpha_temperature_schedule": self.temperature.kind}}

    def models(self) -> dict[str, torch.nn.Module]:
        return {"supernet": self.model}

    # -- exact resume ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        st = super().state_dict()
        st.update({
            "epoch": self.epoch,
            "stop_epoch": self.stop_epoch, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
            "best": self.best.to_dict() if self.best else None,
            "partial": {k: m.state_dict() for k, m in self.partial.items()} if self.partial else None,
        })
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.stop_epoch = int(state["stop_epoch"])
        self.best_acc, self.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        self.best = Genotype.from_dict(state["best"]) if state["best"] else None
        partial = state.get("partial")
        self.partial = {k: Meter.from_state(m) for k, m in partial.items()} if partial else None
        self.model.temperature = self.temperature.at(self.step - 1)


class DartsSearch(DifferentiableSearch):
    """DARTS: K = 1, no edge normalisation, no warm-up; first order unless `unrolled`."""

    name = "darts"


STRATEGIES.register("darts", DartsSearch)
