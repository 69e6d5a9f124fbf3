"""The training loop of a fixed genotype's network: epochs, losses of every method, checkpoints,
exact resume, selection of the epoch on the validation split (`Trainer`). A whole job — data,
parent, trainer, test — is `bitnas.train.job.train`.

Exact resume: every batch's content and order are a pure function of (seed, epoch, rank,
batch) (see `BatchLoader` and, for streamed image folders, `StreamLoader`), the global torch
RNG (drop path) is re-seeded at each epoch start from (seed, epoch, rank), and `last.pt` is written at epoch ends with the model, optimizer,
schedule, all RNG states and the loader position. A run killed mid-epoch and resumed with
`resume=True` redoes that epoch from its start state and ends bitwise identical.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.binary import binarized_layers
from bitnas.common import faults
from bitnas.common.amp import autocast, grad_scaler, sync_interval
from bitnas.common.distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, wrap_model
from bitnas.common.finite import StepGuard, grad_norm
from bitnas.common.layout import CHANNELS_LAST_CHOICES
from bitnas.common.schedules import LRSchedule
from bitnas.data.loader import mix_seed
from bitnas.errors import ConfigError
from bitnas.nets import arch_spec, build_network
from bitnas.run import RunDir
from bitnas.space.genotypes import Genotype, load_genotype
from bitnas.train.config import TrainConfig
from bitnas.train.data import Loader, TrainData
from bitnas.train.sums import EpochSums
from bitnas.train.losses import CenterLoss, KernelLoss, distillation_loss
from bitnas.train.build import CHECKPOINT_FORMAT, build_kwargs, check_resumable, make_optimizer
from bitnas.train.evaluate import evaluate_model
from bitnas.common.checkpoint import load_checkpoint, save_checkpoint
from bitnas.common.files import truncate_jsonl
from bitnas.common.rng import rng_state, seed_everything, set_rng_state
from bitnas.common.steps import Steps

log = logging.getLogger("bitnas")

class Trainer:
    """Trains one network (child or parent) for `cfg.epochs` epochs in `run`.

    parent: the trained fp32 parent (unwrapped, frozen) when the method uses one: kernel
    loss with H = parent kernel, distillation from its logits, or initialisation.
    """

    def __init__(self, cfg: TrainConfig, data: TrainData, run: RunDir, info: DistInfo,
                 parent: nn.Module | None = None, label: str = "", started: float | None = None) -> None:
        self.cfg, self.data, self.run, self.info, self.label = cfg, data, run, info, label
        # wall-clock cost of the run: this process since `started` (time.monotonic) plus what the
        # processes before a --resume spent (kept in the checkpoint)
        self._started = time.monotonic() if started is None else started
        self._earlier = 0.0
        self.device = info.device
        self.genotype: Genotype | None = None if cfg.network else load_genotype(cfg.genotype)
        self.build_kw = build_kwargs(cfg, data, cfg.precision)
        self.arch = arch_spec(self.genotype, **self.build_kw)
        seed_everything(cfg.seed)
        self.model = build_network(self.genotype, **self.build_kw).to(self.device)
        self.model.channels_last = CHANNELS_LAST_CHOICES[cfg.channels_last]
        self.parent = parent
        if parent is not None and cfg.init_from_parent:
            self._init_from(parent)
        self.binary_layers = binarized_layers(self.model)
        self._weight_quantizers = {n: m.weight_quantizer for n, m in self.binary_layers}
        self.net = wrap_model(self.model, info, find_unused=cfg.two_stage and cfg.weight_scale == "learned")
        self.scaler = grad_scaler(cfg.amp, self.device)
        self.sync_every = sync_interval(cfg.sync_every, self.device)

        self.train_loader = data.train_loader(cfg, info)
        self.has_val = data.val is not None
        self.val_loader = data.eval_loader(data.val, cfg.batch_size, info) if data.val is not None else None
        self.test_loader = data.eval_loader(data.test, cfg.batch_size, info)

        self.kernel_loss: KernelLoss | None = None
        self.center_loss: CenterLoss | None = None
        if cfg.method == "cp" and cfg.precision == "binary":
            self.kernel_loss = KernelLoss(self.model, parent if cfg.cp_kernel_target == "parent" else None,
                                          cfg.cp_kernel_target)
            dim = self.model.classifier.in_features
            self.center_loss = CenterLoss(data.num_classes, dim, cfg.cp_center_alpha).to(self.device)
        self.kd = cfg.kd_weight > 0 and parent is not None

        self.epochs = cfg.epochs
        self.stage1_epochs = cfg.stage1_epochs if cfg.precision == "binary" else 0
        self.epoch = 0
        self.steps = Steps("train.step", info, cfg.progress)
        self.metrics: list[dict[str, Any]] = []
        # Model selection reads the validation split only; without one, the last epoch is kept.
        self.best: dict[str, Any] = {"key": "val_top1" if data.val is not None else "last_epoch", "value": None,
                                     "epoch": None}
        self.stage = 0
        self.partial: dict[str, Any] | None = None  # sums of an epoch stopped at a step (resumable)
        self.images_this_run = 0  # images of the last epoch trained by this run (all ranks), for images/s
        self._begin_stage(self.stage_of(0))

    # -------------------------------------------------------------- setup helpers

    def _init_from(self, parent: nn.Module) -> None:
        """Copy every parent tensor whose name and shape match into the child."""
        own = self.model.state_dict()
        src = {k: v for k, v in parent.state_dict().items() if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(src, strict=False)
        log.info("%sinitialised %d of %d tensors from the parent", self._prefix(), len(src), len(own))

    def stage_of(self, epoch: int) -> int:
        """0: single stage; 1: binary activations, real weights; 2: fully binary (two_stage)."""
        if not self.stage1_epochs:
            return 0
        return 1 if epoch < self.stage1_epochs else 2

    def _stage_epochs(self, stage: int) -> int:
        if stage == 0:
            return self.epochs
        return self.stage1_epochs if stage == 1 else self.epochs - self.stage1_epochs

    def _begin_stage(self, stage: int) -> None:
        """Set the weight quantizers for `stage` and make a fresh optimizer and schedule."""
        self.stage = stage
        for name, layer in self.binary_layers:
            layer.weight_quantizer = None if stage == 1 else self._weight_quantizers[name]
        self.optimizer = self._make_optimizer()
        steps = self._stage_epochs(stage) * len(self.train_loader)
        self.scheduler = LRSchedule(self.optimizer, self.cfg.scheduler, self.cfg.lr, self.cfg.lr_min, steps)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.cfg, self.model, self.binary_layers)

    def _prefix(self) -> str:
        return f"[{self.label}] " if self.label else ""

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (collective under DDP: call on every rank)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": all_gather_objects(rng_state(), self.info),
            "loader": self.train_loader.state_dict(),
            "epoch": self.epoch,
            "global_step": self.steps.step,
            "stage": self.stage,
            "arch": self.arch,
            "precision": self.cfg.precision,
            "genotype": self.genotype.to_dict() if self.genotype is not None else None,
            "config": dataclasses.asdict(self.cfg),
            "metrics": list(self.metrics),
            "best": dict(self.best),
            "center_loss": self.center_loss.state_dict() if self.center_loss is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "image_size": self.data.image_size,
            "data": {"name": self.data.train.name, "num_classes": self.data.num_classes,
                     "in_channels": self.data.in_channels, "mean": list(self.data.train.mean),
                     "std": list(self.data.train.std), "classes": list(self.data.train.classes)},
            "world_size": self.info.world_size,
            "partial": self.partial,
            "elapsed": self.elapsed(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore a `state_dict()`; refuses one made for another architecture or config."""
        check_resumable(state, self.cfg, self.arch, source)
        if len(state["rng"]) != self.info.world_size:
            raise ConfigError(f"{source}: saved by {len(state['rng'])} process(es) but this run has "
                              f"{self.info.world_size}; exact resume needs the same number")
        self.model.load_state_dict(state["model"])
        self._begin_stage(int(state["stage"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][self.info.rank])
        self.train_loader.load_state_dict(state["loader"])
        self.epoch = int(state["epoch"])
        self.steps.step = int(state["global_step"])
        self.metrics = list(state["metrics"])
        self.best = dict(state["best"])
        self.partial = dict(state["partial"]) if state.get("partial") else None
        self._earlier = float(state.get("elapsed") or 0.0)
        if self.center_loss is not None and state.get("center_loss") is not None:
            self.center_loss.load_state_dict(state["center_loss"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def elapsed(self) -> float:
        """Seconds of wall clock the run has cost, over every process that worked on it."""
        return self._earlier + time.monotonic() - self._started

    def save(self, name: str) -> Path:
        """Write `name` (e.g. last.pt) atomically on rank 0; every rank must call it."""
        state = self.state_dict()
        path = self.run.file(name)
        if self.info.is_main:
            save_checkpoint(path, state)
        return path

    def resume_from(self, path: Path, state: dict[str, Any] | None = None) -> bool:
        """Load `path` (or its already loaded `state`) if it exists (True), truncating metrics.jsonl to
        the checkpointed epochs."""
        if state is None:
            if not path.is_file():
                return False
            state = load_checkpoint(path, map_location=self.device)
        self.load_state_dict(state, str(path))
        if self.info.is_main:
            truncate_jsonl(self.run.file("metrics.jsonl"), len(self.metrics))
        barrier(self.info)
        log.info("%sresumed from %s after epoch %d", self._prefix(), path, self.epoch)
        return True

    # -------------------------------------------------------------- loop

    def _enter_epoch(self, epoch: int, reseed: bool = True) -> None:
        stage = self.stage_of(epoch)
        if stage != self.stage:
            log.info("%sstage %d: %s", self._prefix(), stage,
                     "fully binary, initialised from stage 1" if stage == 2 else "binary activations, real weights")
            self._begin_stage(stage)
        self.train_loader.set_epoch(epoch)
        self.model.drop_path_prob = self.cfg.drop_path_prob * epoch / self.epochs
        if reseed:  # a resumed partial epoch continues from the RNG state of its checkpoint
            torch.manual_seed(mix_seed(self.cfg.seed, epoch, self.info.rank, 0x7E57))

    def compute_loss(self, logits: Tensor, aux: Tensor | None, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss and its components (unweighted and detached, for the metrics)."""
        cfg = self.cfg
        ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loss = ce
        parts = {"ce": ce.detach()}
        if aux is not None:
            a = F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
            loss = loss + cfg.auxiliary_weight * a
            parts["aux"] = a.detach()
        if self.kd and self.parent is not None:
            with torch.no_grad():
                t_logits, _ = self.parent(x)
            kd = distillation_loss(logits, t_logits, cfg.kd_temperature)
            loss = loss + cfg.kd_weight * kd
            parts["kd"] = kd.detach()
        if self.kernel_loss is not None and self.stage != 1:
            kl = self.kernel_loss()
            loss = loss + cfg.cp_lambda * kl
            parts["kernel"] = kl.detach()
        if self.center_loss is not None:
            c = self.center_loss(self.model.last_features.float(), y)
            loss = loss + cfg.cp_mu * c
            parts["center"] = c.detach()
        return loss, parts

    def _step(self, x: Tensor, y: Tensor, guard: StepGuard, where: str, check_now: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One optimizer step on a batch (forward and loss under `amp`); returns the loss, logits and
        loss components, detached, without reading any of them on the host unless `check_now`."""
        with autocast(self.cfg.amp, self.device):
            logits, aux = self.net(x)
            loss, parts = self.compute_loss(logits, aux, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = nn.utils.clip_grad_norm_(params, self.cfg.grad_clip) if self.cfg.grad_clip > 0 else grad_norm(params)
        # under fp16 an overflowing gradient is the scaler's to skip; the loss is still checked
        guard.add(loss, norm if self.scaler is None else torch.zeros((), device=loss.device), where,
                  self.optimizer.param_groups[0]["lr"])
        if check_now:
            guard.check()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach(), parts

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch over this rank's shard; returns lr (of its first step) and metrics over all ranks."""
        resuming = self.partial is not None
        self._enter_epoch(epoch, reseed=not resuming)
        first_lr = float(self.partial["lr"]) if self.partial is not None else self.scheduler.lr_at(self.scheduler.step_count)
        sums = EpochSums(self.device, self.partial)
        self.partial = None
        seen_before = sums.n_seen  # images of this epoch trained before a resume (not timed by this process)
        guard = StepGuard(self.info.world_size)
        self.net.train()
        if self.parent is not None:
            self.parent.eval()
        batches = self.steps.bar(self.train_loader, f"{self.label or 'train'} {epoch + 1}/{self.epochs}",
                                 len(self.train_loader) - self.train_loader.position)
        bar = batches if self.steps.show else None  # the tqdm bar, for its loss / top-1 postfix
        for x, y in batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.scheduler.apply()
            # the host reads the step's values every sync_every steps (and before any checkpoint)
            synced = (self.steps.step + 1) % self.sync_every == 0
            loss, logits, parts = self._step(x, y, guard, f"{self._prefix()}epoch {epoch + 1} step "
                                             f"{self.steps.step + 1}", check_now=self.sync_every == 1)
            if self.center_loss is not None:
                self.center_loss.update(self.model.last_features, y, lambda t: all_reduce_sum(t, self.info))
            sums.add(loss, logits, y, parts)
            if synced:
                guard.check()
                if bar is not None:
                    now = sums.to_host()
                    bar.set_postfix(loss=f"{now['loss_sum'] / now['n_seen']:.3f}",
                                    top1=f"{100.0 * now['n_correct'] / now['n_seen']:.1f}")
            self.steps.done()
            if (self.train_loader.position < len(self.train_loader) and (synced or not self.info.enabled)
                    and self.steps.stop_requested()):
                # a safe point mid-epoch: keep the partial sums, write last.pt, stop
                guard.check()
                self.partial = {"lr": first_lr, **sums.to_host()}
                if bar is not None:
                    bar.close()
                self.save("last.pt")
                raise self.steps.interrupted(self._resume_hint())
        if bar is not None:
            bar.close()
        guard.check()
        now = sums.to_host()
        keys = sorted(now["sums"])
        packed = torch.tensor([now["n_seen"], now["n_correct"], now["loss_sum"], now["n_seen"] - seen_before]
                              + [now["sums"][k] for k in keys], dtype=torch.float64)
        packed = all_reduce_sum(packed, self.info)
        n = max(1.0, float(packed[0]))
        self.images_this_run = int(packed[3])
        out = {"lr": first_lr, "train_loss": float(packed[2]) / n, "train_top1": 100.0 * float(packed[1]) / n}
        out.update({f"train_{k}": float(packed[4 + i]) / n for i, k in enumerate(keys)})
        return out

    def evaluate(self, loader: Loader | None, prefix: str) -> dict[str, float]:
        """loss (plain cross-entropy), top-1 and top-5 in % on a split, summed over all ranks."""
        return evaluate_model(self.model, loader, self.info, self.device, prefix)

    def _should_eval(self, epoch: int) -> bool:
        last = epoch + 1 == self.epochs
        return last or (self.cfg.eval_every > 0 and (epoch + 1) % self.cfg.eval_every == 0)

    def fit(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the last epoch's record."""
        if self.info.is_main and self.epoch == 0:
            truncate_jsonl(self.run.file("metrics.jsonl"), 0)
        for epoch in range(self.epoch, self.epochs):
            t0 = time.time()
            record: dict[str, Any] = {"epoch": epoch + 1}
            if self.stage_of(epoch):
                record["stage"] = self.stage_of(epoch)
            record.update(self.train_epoch(epoch))
            train_seconds = time.time() - t0
            if self._should_eval(epoch):
                if self.has_val:
                    record.update(self.evaluate(self.val_loader, "val"))
                if self.cfg.test_eval == "every":
                    record.update(self.evaluate(self.test_loader, "test"))
            record["train_seconds"] = round(train_seconds, 3)
            # the images this process trained in the time it measured (after a mid-epoch resume: the rest)
            record["images_per_second"] = round(self.images_this_run / max(train_seconds, 1e-9), 2)
            record["seconds"] = round(time.time() - t0, 3)
            self.metrics.append(record)
            self.run.log_metrics(record)
            self.epoch = epoch + 1
            # best.pt before last.pt: whatever last.pt says is best is on disk, even after a crash
            # between the two writes (a resume redoes the epoch and rewrites the same best.pt).
            if self._update_best(record):
                self.save("best.pt")
            self.save("last.pt")
            self._log_epoch(record)
            if self.epoch < self.epochs and self.steps.stop_requested():
                raise self.steps.interrupted(self._resume_hint())
        faults.point("train.end", self.epoch, state=lambda: {"model": self.model.state_dict()})
        barrier(self.info)
        return self.metrics[-1] if self.metrics else {}

    def _resume_hint(self) -> str:
        return f"{self.run.file('last.pt')} holds the run: continue with the same command and --resume"

    def _update_best(self, record: dict[str, Any]) -> bool:
        """Track the selected epoch. Stage-1 epochs of a two-stage run (real-valued weights) are never
        selected: best.pt must hold the network being trained, the fully binary one."""
        if record.get("stage") == 1:
            return False
        key = self.best["key"]
        if key == "last_epoch":
            self.best.update(value=record["epoch"], epoch=record["epoch"])
            return True
        if key not in record:
            return False
        if self.best["value"] is None or record[key] > self.best["value"]:
            self.best.update(value=record[key], epoch=record["epoch"])
            return True
        return False

    def splits(self) -> dict[str, Any]:
        """Where every figure comes from: image counts and how the validation split was made."""
        out: dict[str, Any] = {"train": len(self.data.train), "test": len(self.data.test)}
        if self.data.val is not None:
            out["val"] = len(self.data.val)
            out["val_source"] = (f"stratified {self.cfg.val_fraction:g} of the training images "
                                 f"(seed {self.cfg.seed})")
        out["selection"] = self.best["key"]
        return out

    def final_test(self) -> dict[str, Any]:
        """The one evaluation of the test split: on best.pt's weights (chosen by validation top-1,
        or the last epoch without a validation split). Logged to metrics.jsonl as a `final` record;
        the model is left holding the last epoch's weights."""
        selected = self.run.file("best.pt")
        barrier(self.info)
        last = {k: v.clone() for k, v in self.model.state_dict().items()}
        if self.best["epoch"] != self.epoch:
            self.model.load_state_dict(load_checkpoint(selected, map_location=self.device)["model"])
        try:
            m = self.evaluate(self.test_loader, "test")
        finally:
            self.model.load_state_dict(last)
        record = {"final": True, "selected_epoch": self.best["epoch"], "selected_by": self.best["key"], **m}
        if self.best["key"] == "val_top1":
            record["val_top1"] = self.best["value"]
        record["splits"] = self.splits()
        self.run.log_metrics(record)
        log.info("%stest (once, epoch %s selected by %s): loss %.4f top1 %.2f%% top5 %.2f%%", self._prefix(),
                 record["selected_epoch"], record["selected_by"], m["test_loss"], m["test_top1"], m["test_top5"])
        return record

    def _log_epoch(self, r: dict[str, Any]) -> None:
        msg = f"{self._prefix()}epoch {r['epoch']}/{self.epochs}"
        if "stage" in r:
            msg += f" (stage {r['stage']})"
        msg += f"  train loss {r['train_loss']:.4f} top1 {r['train_top1']:.2f}%"
        if "val_top1" in r:
            msg += f" | val top1 {r['val_top1']:.2f}%"
        if "test_top1" in r:
            msg += f" | test loss {r['test_loss']:.4f} top1 {r['test_top1']:.2f}% top5 {r['test_top5']:.2f}%"
        msg += f" | lr {r['lr']:.2e} | {r['seconds']:.1f}s"
        log.info(msg)
