"""DARTS (Liu et al., ICLR 2019) and the shared loop of every differentiable strategy.

One unit = one epoch over the train split: for each batch, one α/β step on the next batch of a
persistent validation stream (skipped during warm-up), then one SGD step of the weights (cosine
lr, momentum, weight decay, gradient clipping). After the epoch: evaluation on the whole
validation split, the derived genotype, best-epoch tracking and (if enabled) early stopping.

Multi-process: every gradient is averaged over ranks before it is applied (`ctx.sync_grads`),
so α and the weights stay bitwise identical on all ranks; BatchNorm statistics are broadcast
from rank 0 at the end of each epoch.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bitnas.data import InfiniteLoader
from bitnas.errors import ConfigError
from bitnas.search.architect import Architect
from bitnas.search.early_stopping import EarlyStopping, ranking
from bitnas.search.strategy import STRATEGIES, WEIGHT_KEYS, SearchContext, SearchStrategy, kill_hook_for_tests
from bitnas.search.supernet import SuperNetwork, fit_partial_ratio, genotype_paths
from bitnas.space.genotypes import Genotype

log = logging.getLogger("bitnas")

ARCH_TRACE_ENV = "BITNAS_TEST_ARCH_TRACE"


def make_weight_optimizer(cfg: Any, params: list[Tensor]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam over the supernet weights (multi-tensor `foreach`
    kernels on every device: bitwise the single-tensor result, less per-tensor overhead)."""
    if cfg.w_optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.w_lr, weight_decay=cfg.w_weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay,
                           foreach=True)


def weight_step(ctx: SearchContext, model: SuperNetwork, optimizer: torch.optim.Optimizer, params: list[Tensor],
                x: Tensor, y: Tensor, grad_clip: float,
                paths: dict[str, list[int]] | None = None) -> tuple[Tensor, Tensor]:
    """Forward, backward (weights only), rank-average, clip and step; returns (loss, logits) detached."""
    logits = model(x, paths=paths)[0] if paths is not None else model(x)[0]
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g
    ctx.sync_grads(params)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), logits.detach()


class Meter:
    """Sums of loss·n, correct and n, reduced over ranks on demand."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.correct = 0.0
        self.n = 0.0

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        n = y.shape[0]
        self.loss += float(loss) * n
        self.correct += float((logits.argmax(1) == y).sum())
        self.n += n

    def result(self, ctx: SearchContext) -> tuple[float, float]:
        """(mean loss, accuracy in %) over all ranks."""
        loss, correct, n = ctx.reduce_sums([self.loss, self.correct, self.n])
        return (loss / n, 100.0 * correct / n) if n else (float("nan"), float("nan"))


def progress(iterable: Any, ctx: SearchContext, desc: str, total: int) -> Any:
    """Wrap in tqdm when progress bars are on (rank 0)."""
    if not ctx.show_progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


@torch.no_grad()
def evaluate(ctx: SearchContext, model: SuperNetwork, loader: Any, paths: Any = None) -> tuple[float, float]:
    """(loss, accuracy %) over a loader's full epoch, eval-mode BN; `paths(i)` gives a per-batch path."""
    was_training = model.training
    model.eval()
    m = Meter()
    for i, (x, y) in enumerate(loader.iter_from(0)):
        x, y = x.to(ctx.device), y.to(ctx.device)
        logits = model(x, paths=paths(i))[0] if paths is not None else model(x)[0]
        m.add(F.cross_entropy(logits, y), logits, y)
    model.train(was_training)
    return m.result(ctx)


def nested(t: Tensor) -> list[Any]:
    return t.detach().cpu().tolist()


class DifferentiableSearch(SearchStrategy):
    """DARTS-family search: bilevel α/weight optimisation of a (partial-channel) supernet."""

    stateful = ("model", "w_optimizer", "scheduler", "architect", "train_loader", "val_stream", "stopper")
    name = "darts"
    default_space = "darts"
    reads = WEIGHT_KEYS | {
        "epochs", "precision", "arch_lr", "arch_beta1", "arch_beta2", "arch_weight_decay", "unrolled", "arch_fd_scale",
        "k_normal", "k_reduce", "edge_norm", "warmup_epochs", "early_stop", "early_stop_skips",
        "early_stop_patience", "early_stop_min_epochs"}
    default_k = (1, 1)
    default_edge_norm = False
    default_warmup_fraction = 0.0
    default_arch_lr = 3e-4
    default_early_stop = "none"

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        if cfg.epochs < 0:
            raise ConfigError(f"epochs must be ≥ 0, got {cfg.epochs}")
        self.k_normal = self._partial_ratio(cfg.k_normal or self.default_k[0], "k_normal")
        self.k_reduce = self._partial_ratio(cfg.k_reduce or self.default_k[1], "k_reduce")
        self.edge_norm = self.default_edge_norm if cfg.edge_norm == "auto" else cfg.edge_norm == "on"
        self.warmup = (int(self.default_warmup_fraction * cfg.epochs + 0.5) if cfg.warmup_epochs < 0
                       else cfg.warmup_epochs)
        self.arch_lr = cfg.arch_lr or self.default_arch_lr
        if cfg.unrolled and cfg.w_optimizer != "sgd":
            raise ConfigError("unrolled (second-order) search needs w_optimizer: sgd")
        self.model = self.build_supernet(cfg.precision, self.k_normal, self.k_reduce, self.edge_norm)
        self.w_params = self.model.weight_parameters()
        self.w_optimizer = make_weight_optimizer(cfg, self.w_params)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, T_max=max(1, cfg.epochs),
                                                                    eta_min=cfg.w_lr_min)
        self.architect = Architect(self.model, self.arch_lr, (cfg.arch_beta1, cfg.arch_beta2),
                                   cfg.arch_weight_decay, average=ctx.average, fd_scale=cfg.arch_fd_scale)
        self.train_loader = ctx.loader("train", shuffle=True)
        self.val_stream = InfiniteLoader(ctx.loader("val", shuffle=True, seed_offset=1))
        self.eval_loader = ctx.loader("val", shuffle=False)
        criterion = self.default_early_stop if cfg.early_stop == "auto" else cfg.early_stop
        self.stopper = EarlyStopping(criterion, cfg.early_stop_skips, cfg.early_stop_patience,
                                     cfg.early_stop_min_epochs)
        self.epoch = 0
        self.step = 0
        self.stop_epoch = -1
        self.best_acc = float("-inf")
        self.best_epoch = -1
        self.best: Genotype | None = None
        self.trace = bool(os.environ.get(ARCH_TRACE_ENV))
        self.trace_hex = ""
        log.info("%s: K normal %d / reduce %d, edge normalisation %s, warm-up %d of %d epochs, arch lr %g, "
                 "%s order, precision %s, early stopping %s", self.name, self.k_normal, self.k_reduce,
                 "on" if self.edge_norm else "off", self.warmup, cfg.epochs, self.arch_lr,
                 "second" if cfg.unrolled else "first", cfg.precision, criterion)

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

    def _trace(self) -> None:
        """Test hook (BITNAS_TEST_ARCH_TRACE set): chain a SHA-256 over α/β after every α step."""
        if self.trace:
            h = hashlib.sha256(self.trace_hex.encode())
            for p in self.model.arch_parameters():
                h.update(p.detach().cpu().numpy().tobytes())
            self.trace_hex = h.hexdigest()

    def run_unit(self) -> dict[str, Any]:
        ctx, cfg, model = self.ctx, self.cfg, self.model
        update_arch = self.epoch >= self.warmup
        lr = float(self.scheduler.get_last_lr()[0])
        model.train()
        self.train_loader.set_epoch(self.epoch)
        train_m, arch_m = Meter(), Meter()
        batches = progress(self.train_loader, ctx, f"{self.name} epoch {self.epoch + 1}/{cfg.epochs}",
                           len(self.train_loader))
        for x, y in batches:
            x, y = x.to(ctx.device), y.to(ctx.device)
            if update_arch:
                xv, yv = next(self.val_stream)
                xv, yv = xv.to(ctx.device), yv.to(ctx.device)
                vloss, vlogits = self.architect.step((x, y), (xv, yv), lr, self.w_optimizer, cfg.unrolled)
                arch_m.add(vloss, vlogits, yv)
                self.images += yv.shape[0] * ctx.world_size
                self._trace()
            loss, logits = weight_step(ctx, model, self.w_optimizer, self.w_params, x, y, cfg.grad_clip)
            train_m.add(loss, logits, y)
            self.images += y.shape[0] * ctx.world_size
            self.step += 1
            kill_hook_for_tests(self.step)
        self.scheduler.step()
        ctx.broadcast_buffers(model)
        train_loss, train_acc = train_m.result(ctx)
        val_loss, val_acc = evaluate(ctx, model, self.eval_loader)
        self.images += len(self.eval_loader.indices()) * ctx.world_size
        g = model.genotype()
        rec: dict[str, Any] = {
            "epoch": self.epoch, "lr": lr, "arch_updates": update_arch,
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
        }
        if update_arch:
            rec["arch_val_loss"], rec["arch_val_acc"] = arch_m.result(ctx)
        rec["alphas"] = {k: nested(v) for k, v in model.arch_weights().items()}
        rec["genotype"] = g.to_dict()
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.best = val_acc, self.epoch, g
        rec["best_epoch"] = self.best_epoch
        if update_arch and self.stopper.enabled:
            n, r = model.edge_strengths()
            ops, steps, zero = model.ops, model.steps, model.space.zero_op
            ranks = {"normal": ranking(n, ops, steps, zero), "reduce": ranking(r, ops, steps, zero)}
            reason = self.stopper.update(ranks, g)
            if reason:
                self.stop_reason, self.stop_epoch = f"early_stop:{reason}", self.epoch
                rec.update(stop_reason=self.stop_reason, stop_epoch=self.epoch, stop_detail=self.stopper.detail)
                log.info("%s: early stop after epoch %d: %s", self.name, self.epoch + 1, self.stopper.detail)
        if self.trace:
            rec["arch_trace"] = self.trace_hex
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
                             "precision": self.cfg.precision, "early_stop": self.stopper.criterion}}

    def models(self) -> dict[str, torch.nn.Module]:
        return {"supernet": self.model}

    # -- exact resume ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        st = super().state_dict()
        st.update({
            "epoch": self.epoch, "step": self.step,
            "stop_epoch": self.stop_epoch, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
            "best": self.best.to_dict() if self.best else None, "trace": self.trace_hex,
        })
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.stop_epoch = int(state["stop_epoch"])
        self.best_acc, self.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        self.best = Genotype.from_dict(state["best"]) if state["best"] else None
        self.trace_hex = str(state["trace"])


class DartsSearch(DifferentiableSearch):
    """DARTS: K = 1, no edge normalisation, no warm-up; first order unless `unrolled`."""

    name = "darts"


STRATEGIES.register("darts", DartsSearch)
