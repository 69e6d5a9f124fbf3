"""Training a fixed genotype: the loop, checkpoints, exact resume, parent/child methods.

`train(cfg)` is the entry point used by `bitnas train`, the demo and the benchmarks. It loads
the data once, obtains the fp32 parent when the method needs one (trains it in
`<out>/parent/`, or loads `parent_checkpoint`; the result is `<out>/parent.pt`), then trains
the network of `cfg.precision` with a `Trainer`.

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
from typing import Any, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.binary import binarized_layers
from bitnas.common import faults, signals
from bitnas.common.distributed import (
    DistInfo, all_gather_objects, all_reduce_sum, any_rank, barrier, broadcast_buffers, broadcast_object, cleanup,
    init_distributed, on_main_rank, unwrap, wrap_model,
)
from bitnas.common.finite import check_step, grad_norm
from bitnas.common.layout import CHANNELS_LAST_CHOICES
from bitnas.common.schedules import LRSchedule
from bitnas.config import check_resume_config
from bitnas.data import BatchLoader, load_dataset
from bitnas.data.loader import mix_seed
from bitnas.errors import BitnasError, ConfigError, DataError
from bitnas.nets import arch_spec, build_network, network_from_checkpoint
from bitnas.nets.limits import check_build_kwargs, check_image_side, check_input_size
from bitnas.run import RunDir, check_out, clear_run, default_out
from bitnas.space.genotypes import Genotype, build_hints, load_genotype
from bitnas.train.config import TrainConfig
from bitnas.train.data import Loader, TrainData, checkpoint_test_loader, load_train_data
from bitnas.train.losses import CenterLoss, KernelLoss, distillation_loss
from bitnas.utils import (
    atomic_write_bytes, load_checkpoint, progress_enabled, resolve_device, rng_state, save_checkpoint, seed_everything,
    set_rng_state, truncate_jsonl,
)

log = logging.getLogger("bitnas")

CHECKPOINT_FORMAT = "bitnas-train/1"


# ---------------------------------------------------------------------------- network

def build_kwargs(cfg: TrainConfig, data: TrainData | ImageDataset, precision: str) -> dict[str, Any]:
    """build_network kwargs of the run (stored in checkpoints through `arch_spec`); `data`: the
    run's splits, or just its training images."""
    kw: dict[str, Any] = dict(
        style=cfg.style, precision=precision, structure=cfg.structure or "cpnas",
        init_channels=cfg.init_channels, layers=cfg.layers, num_classes=data.num_classes,
        in_channels=data.input_shape[0], auxiliary=cfg.auxiliary, weight_quantizer=cfg.weight_quantizer,
        weight_scale=cfg.weight_scale, pad_value=cfg.pad_value, binary_preprocess=cfg.binary_preprocess,
    )
    if cfg.activation:
        kw["activation"] = cfg.activation
    if cfg.network:
        kw["blocks"] = cfg.network
    return kw


def make_optimizer(cfg: TrainConfig, model: nn.Module, binary_layers: list[tuple[str, nn.Module]]) -> torch.optim.Optimizer:
    """SGD or Adam over the trainable parameters; the latent weights of `binary_layers` get
    `binary_weight_decay`, everything else `weight_decay`. `foreach`: one multi-tensor kernel
    per update term instead of a Python loop over ~100 tensors, on CPU too (bitwise the same
    result; the Adam step of the C=8 DARTS_V2 network took 9 ms instead of 19 ms)."""
    latent = {id(m.weight) for _, m in binary_layers}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in latent], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) in latent], "weight_decay": cfg.binary_weight_decay},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    return torch.optim.Adam(groups, lr=cfg.lr, foreach=True)


def accuracy_counts(logits: Tensor, y: Tensor, k: int = 5) -> tuple[int, int]:
    """(# top-1 correct, # top-k correct) with k capped at the number of classes."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top.eq(y[:, None])
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


# ---------------------------------------------------------------------------- trainer

def check_resumable(state: dict[str, Any], cfg: TrainConfig, arch: dict[str, Any], source: str) -> None:
    """A training checkpoint made by this run: the format, the network and every result-shaping key match."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise BitnasError(f"{source}: not a bitnas training checkpoint (format {state.get('format')!r})")
    if state.get("arch") != arch:
        raise ConfigError(f"{source}: made for another network (genotype/precision/size/data differ); "
                          "resume needs the same settings, or use another --out")
    check_resume_config(state.get("config") or {}, cfg, source)


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
        find_unused = cfg.two_stage and cfg.weight_scale == "learned"
        self.net = wrap_model(self.model, info) if not find_unused else _wrap_find_unused(self.model, info)

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
        self.global_step = 0
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

    def _show_progress(self) -> bool:
        if not self.info.is_main or self.cfg.progress == "off":
            return False
        return self.cfg.progress == "on" or progress_enabled()

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
            "global_step": self.global_step,
            "stage": self.stage,
            "arch": self.arch,
            "precision": self.cfg.precision,
            "genotype": self.genotype.to_dict() if self.genotype is not None else None,
            "config": dataclasses.asdict(self.cfg),
            "metrics": list(self.metrics),
            "best": dict(self.best),
            "center_loss": self.center_loss.state_dict() if self.center_loss is not None else None,
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
        self.global_step = int(state["global_step"])
        self.metrics = list(state["metrics"])
        self.best = dict(state["best"])
        self.partial = dict(state["partial"]) if state.get("partial") else None
        self._earlier = float(state.get("elapsed") or 0.0)
        if self.center_loss is not None and state.get("center_loss") is not None:
            self.center_loss.load_state_dict(state["center_loss"])

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

    def compute_loss(self, logits: Tensor, aux: Tensor | None, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The training loss and its components (unweighted, for the metrics)."""
        cfg = self.cfg
        ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loss = ce
        parts = {"ce": float(ce.detach())}
        if aux is not None:
            a = F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
            loss = loss + cfg.auxiliary_weight * a
            parts["aux"] = float(a.detach())
        if self.kd and self.parent is not None:
            with torch.no_grad():
                t_logits, _ = self.parent(x)
            kd = distillation_loss(logits, t_logits, cfg.kd_temperature)
            loss = loss + cfg.kd_weight * kd
            parts["kd"] = float(kd.detach())
        if self.kernel_loss is not None and self.stage != 1:
            kl = self.kernel_loss()
            loss = loss + cfg.cp_lambda * kl
            parts["kernel"] = float(kl.detach())
        if self.center_loss is not None:
            c = self.center_loss(self.model.last_features, y)
            loss = loss + cfg.cp_mu * c
            parts["center"] = float(c.detach())
        return loss, parts

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch over this rank's shard; returns lr (of its first step) and metrics over all ranks."""
        resuming = self.partial is not None
        self._enter_epoch(epoch, reseed=not resuming)
        part = self.partial if resuming else {"lr": self.scheduler.lr_at(self.scheduler.step_count), "n_seen": 0,
                                               "n_correct": 0, "loss_sum": 0.0, "sums": {}}
        self.partial = None
        first_lr = float(part["lr"])
        sums: dict[str, float] = dict(part["sums"])
        n_seen, n_correct, loss_sum = int(part["n_seen"]), int(part["n_correct"]), float(part["loss_sum"])
        seen_before = n_seen  # images of this epoch trained before a resume (not timed by this process)
        self.net.train()
        if self.parent is not None:
            self.parent.eval()
        stop = signals.current()
        batches: Iterable = self.train_loader
        bar = None
        if self._show_progress():
            from tqdm import tqdm

            bar = tqdm(batches, total=len(self.train_loader) - self.train_loader.position, leave=False,
                       desc=f"{self.label or 'train'} {epoch + 1}/{self.epochs}", dynamic_ncols=True)
            batches = bar
        for x, y in batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.scheduler.apply()
            logits, aux = self.net(x)
            loss, parts = self.compute_loss(logits, aux, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for p in self.model.parameters() if p.grad is not None]
            norm = nn.utils.clip_grad_norm_(params, self.cfg.grad_clip) if self.cfg.grad_clip > 0 else grad_norm(params)
            check_step(loss.detach(), norm, f"{self._prefix()}epoch {epoch + 1} step {self.global_step + 1}",
                       self.optimizer.param_groups[0]["lr"], self.info.world_size)
            self.optimizer.step()
            self.scheduler.step()
            if self.center_loss is not None:
                self.center_loss.update(self.model.last_features, y, lambda t: all_reduce_sum(t, self.info))
            b = int(y.shape[0])
            n_seen += b
            n_correct += int(logits.detach().argmax(1).eq(y).sum())
            loss_sum += float(loss.detach()) * b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * b
            self.global_step += 1
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}", top1=f"{100.0 * n_correct / n_seen:.1f}")
            faults.point("train.step", self.global_step)
            if self.train_loader.position < len(self.train_loader) and any_rank(stop.requested, self.info):
                # a safe point mid-epoch: keep the partial sums, write last.pt, stop
                self.partial = {"lr": first_lr, "n_seen": n_seen, "n_correct": n_correct, "loss_sum": loss_sum,
                                "sums": dict(sums)}
                if bar is not None:
                    bar.close()
                self.save("last.pt")
                raise stop.interrupted(self._resume_hint())
        if bar is not None:
            bar.close()
        keys = sorted(sums)
        packed = torch.tensor([n_seen, n_correct, loss_sum, n_seen - seen_before] + [sums[k] for k in keys],
                              dtype=torch.float64)
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
            if self.epoch < self.epochs and any_rank(signals.current().requested, self.info):
                raise signals.current().interrupted(self._resume_hint())
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


def _wrap_find_unused(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP that tolerates parameters without gradient (learned α is unused in stage 1)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: Loader | None, info: DistInfo, device: torch.device,
                   prefix: str = "test") -> dict[str, float]:
    """`{prefix}_loss`, `{prefix}_top1`, `{prefix}_top5` (in %) and `{prefix}_images` over all ranks.

    `loader` is this rank's share (None when the rank has no samples of the split)."""
    model = unwrap(model)
    broadcast_buffers(model, info)  # each rank's share is judged with the statistics rank 0 saves
    was_training = model.training
    model.eval()
    loss_sum, c1, c5, n = 0.0, 0, 0, 0
    if loader is not None:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            a, b = accuracy_counts(logits, y)
            c1, c5, n = c1 + a, c5 + b, n + int(y.shape[0])
    model.train(was_training)
    packed = all_reduce_sum(torch.tensor([loss_sum, c1, c5, n], dtype=torch.float64), info)
    total = max(1.0, float(packed[3]))
    return {f"{prefix}_loss": float(packed[0]) / total, f"{prefix}_top1": 100.0 * float(packed[1]) / total,
            f"{prefix}_top5": 100.0 * float(packed[2]) / total, f"{prefix}_images": int(packed[3])}


# ---------------------------------------------------------------------------- parent

def _check_parent_checkpoint(ck: dict[str, Any], path: str, genotype: Genotype | None,
                             build_kw: dict[str, Any]) -> None:
    """The parent must be fp32, of the same genotype (or hand-designed network), classes and input
    channels as the child."""
    arch = ck.get("arch")
    if not isinstance(arch, dict) or not isinstance(arch.get("network"), dict):
        raise BitnasError(f"{path}: no architecture stored in this checkpoint")
    net = arch["network"]
    if net.get("precision") != "fp32":
        raise ConfigError(f"parent_checkpoint {path}: a parent must be full precision, this one is {net.get('precision')!r}")
    stored = ck["arch"].get("genotype")
    if (Genotype.from_dict(stored, path) if stored is not None else None) != genotype:
        raise ConfigError(f"parent_checkpoint {path}: made for another genotype than --genotype")
    for key in ("num_classes", "in_channels", "init_channels", "layers", "style", "blocks"):
        if net.get(key) != build_kw.get(key):
            raise ConfigError(f"parent_checkpoint {path}: {key} is {net.get(key)!r} but the child has {build_kw.get(key)!r}")


def _frozen(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_parent_checkpoint(cfg: TrainConfig, data: TrainData, genotype: Genotype | None,
                           info: DistInfo) -> nn.Module:
    """The fp32 network of `parent_checkpoint`, checked (precision, genotype, sizes, weights) and built."""
    src = cfg.parent_checkpoint
    ck = load_checkpoint(src, map_location=info.device)
    _check_parent_checkpoint(ck, src, genotype, build_kwargs(cfg, data, "fp32"))
    return network_from_checkpoint(ck, src)


def obtain_parent(cfg: TrainConfig, data: TrainData, run: RunDir, info: DistInfo,
                  given: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen fp32 parent and its test figures (the parent as used, evaluated once): `given`
    (loaded from parent_checkpoint, which is copied to `<out>/parent.pt`), a finished
    `<out>/parent.pt` when resuming, or trained in `<out>/parent/` (its last epoch, copied there)."""
    target = run.file("parent.pt")
    if given is not None:
        src = cfg.parent_checkpoint
        if info.is_main and Path(src).resolve() != target.resolve():
            atomic_write_bytes(target, Path(src).read_bytes())
        barrier(info)
        model = _frozen(given, info.device)
        return model, evaluate_model(model, data.eval_loader(data.test, cfg.batch_size, info), info, info.device, "test")
    if cfg.resume and target.is_file():
        ck = load_checkpoint(target, map_location=info.device)
        log.info("[parent] using the finished parent %s", target)
    else:
        pcfg = dataclasses.replace(
            cfg, precision="fp32", method="plain", kd_weight=0.0, init_from_parent=False, two_stage=False,
            parent_checkpoint="", epochs=cfg.parent_epochs or cfg.epochs, out=str(run.file("parent")))
        prun = RunDir(pcfg.out, writer=info.is_main)
        prun.save_config(pcfg, command="train")
        trainer = Trainer(pcfg, data, prun, info, label="parent")
        if not (cfg.resume and trainer.resume_from(prun.file("last.pt"))):
            if info.is_main:
                clear_run(prun.path)
            barrier(info)
        trainer.fit()
        if info.is_main:
            atomic_write_bytes(target, prun.file("last.pt").read_bytes())
        prun.detach_log_file()
        barrier(info)
        ck = load_checkpoint(target, map_location=info.device)
    model = _frozen(network_from_checkpoint(ck, str(target)), info.device)
    return model, evaluate_model(model, data.eval_loader(data.test, cfg.batch_size, info), info, info.device, "test")


# ---------------------------------------------------------------------------- entry point

def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg` (under torchrun: on every process); returns final metrics and file paths.

    Keys: out, last, best, parent (path or None), metrics (last epoch's record), best_metric
    ({key, value, epoch}), test_top1, parent_test_top1 (or None), seconds (wall clock over every
    process of the run, resumes included).
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = init_distributed(cfg.device)
    if not info.is_main:
        log.setLevel(logging.ERROR)
    try:
        with signals.graceful_stop():
            result = _train(cfg, info)
    except BaseException:
        if info.enabled and info.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        raise
    cleanup(info)
    return result


def _train(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    started = time.monotonic()
    out = broadcast_object(cfg.out or default_out("train"), info)
    cfg = dataclasses.replace(cfg, out=out)
    genotype = None if cfg.network else load_genotype(cfg.genotype)
    hints = {} if cfg.network else {k: v for k, v in build_hints(cfg.genotype).items() if not getattr(cfg, k)}
    if hints:
        log.info("train: using the search's %s", ", ".join(f"{k} {v}" for k, v in hints.items()))
        cfg = dataclasses.replace(cfg, **hints)
    # everything is checked before the run directory is touched
    on_main_rank(lambda: check_out(out, "train", cfg.resume, cfg.force), info)
    data = load_train_data(cfg, info.world_size)
    check_network(cfg, data, genotype)
    given_parent = load_parent_checkpoint(cfg, data, genotype, info) if cfg.needs_parent and cfg.parent_checkpoint else None
    run = RunDir(out, writer=info.is_main, create=False)
    resuming = cfg.resume and run.file("last.pt").is_file()
    resume_state = None
    if resuming:
        resume_state = load_checkpoint(run.file("last.pt"), map_location=info.device)
        arch = arch_spec(genotype, **build_kwargs(cfg, data, cfg.precision))
        check_resumable(resume_state, cfg, arch, str(run.file("last.pt")))
    if cfg.resume and not resuming:
        log.info("%s: no last.pt to resume from; starting from the beginning", run.path)
    if not cfg.resume and info.is_main:
        gone = clear_run(run.path, keep=cfg.parent_checkpoint)
        if gone:
            log.warning("%s: replacing %s of an earlier run", run.path, ", ".join(gone))
    barrier(info)
    run.create()
    run.save_config(cfg, command="train")
    log.info("train: %s, %s, C=%d, %d cells, %d epochs on %d images of %s (%s) → %s", cfg.network or cfg.genotype,
             cfg.precision, cfg.init_channels, cfg.layers, cfg.epochs, len(data.train), data.train.name, info.device,
             run.path)

    parent, parent_final = None, {}
    if cfg.needs_parent:
        parent, parent_final = obtain_parent(cfg, data, run, info, given=given_parent)
    trainer = Trainer(cfg, data, run, info, parent=parent, label="child" if parent is not None else "", started=started)
    if resume_state is not None:
        trainer.resume_from(run.file("last.pt"), resume_state)
    final = trainer.fit()
    test = trainer.final_test()
    result = {
        "out": str(run.path), "last": str(run.file("last.pt")), "best": str(run.file("best.pt")),
        "parent": str(run.file("parent.pt")) if parent is not None else None,
        "metrics": final, "best_metric": trainer.best, "selected_epoch": test["selected_epoch"],
        "val_top1": test.get("val_top1"), "test_top1": test["test_top1"], "test_top5": test["test_top5"],
        "test_loss": test["test_loss"], "splits": test["splits"],
        "parent_test_top1": parent_final.get("test_top1"),
        "seconds": round(trainer.elapsed(), 3),
    }
    run.write_json("result.json", result)
    return result


def check_network(cfg: TrainConfig, data: TrainData, genotype: Genotype | None) -> None:
    """The network `cfg` describes can be built for `data`: known op settings, sizes in range,
    images large enough for its stride-2 stages."""
    kw = build_kwargs(cfg, data, cfg.precision)
    check_build_kwargs(kw, "train", multiplier=len(genotype.normal_concat) if genotype is not None else 4)
    check_input_size(cfg.style, cfg.layers, data.image_size, f"data {cfg.data}", blocks=cfg.network)


# ---------------------------------------------------------------------------- eval

def _evaluate_runtime_file(path: str, data: str, batch_size: int, engine: str, threads: int) -> dict[str, Any]:
    """`evaluate_checkpoint` for an `.onnx` / OpenVINO `.xml` export on ONNX Runtime or OpenVINO."""
    from bitnas.deploy.export import load_export
    from bitnas.deploy.runtimes import file_kind

    if file_kind(path) == "bitnas" or file_kind(path) is None:
        raise ConfigError(f"{path}: --engine {engine} runs `bitnas export --format onnx|openvino` files (.onnx, .xml)")
    model = load_export(path, engine if engine != "torch" else "auto", threads=threads)
    net = (model.meta.get("arch") or {}).get("network")
    net = net if isinstance(net, dict) else {}
    size = (model.meta.get("input") or {}).get("image_size") or 0
    kw = {"image_size": size} if size and data.split(":", 1)[0].strip() in ("imagefolder", "image-folder") else {}
    test = load_dataset(data, "test", **kw)
    c = test.input_shape[0]
    if net and (c != net.get("in_channels") or test.num_classes != net.get("num_classes")):
        raise DataError(f"{data}: {c} channel(s) and {test.num_classes} classes, but the network in {path} takes "
                        f"{net.get('in_channels')} channel(s) and has {net.get('num_classes')} classes")
    info = DistInfo(device=torch.device("cpu"))
    m = evaluate_model(model, BatchLoader(test, batch_size, shuffle=False, seed=0), info, info.device, "test")
    return {"top1": m["test_top1"], "top5": m["test_top5"], "loss": m["test_loss"], "num_images": m["test_images"],
            "checkpoint": str(path), "data": data, "dataset": test.name, "precision": net.get("precision"),
            "epoch": None, "engine": model.engine}


def evaluate_checkpoint(path: str, data: str, batch_size: int = 256, device: str = "auto",
                        genotype: str | None = None, precision: str | None = None, engine: str = "torch",
                        threads: int = 1) -> dict[str, Any]:
    """Rebuild the network stored in checkpoint `path` and evaluate it on the test split of `data`.

    `genotype` / `precision`, when given, must agree with the checkpoint (else ConfigError).
    `engine="bitpack"` runs an export's binary convs on the XNOR-popcount kernels (`threads`).
    Returns top1, top5 (in %), loss (mean cross-entropy), num_images, plus what was evaluated.
    """
    from bitnas.deploy.export import is_export_file, network_from_export, read_export
    from bitnas.deploy.runtimes import RUNTIMES, file_kind

    if engine in RUNTIMES or file_kind(path) in ("onnx", "openvino"):
        return _evaluate_runtime_file(path, data, batch_size, engine, threads)
    exported = is_export_file(path)
    if engine not in ("torch", "bitpack"):
        raise ConfigError(f"--engine '{engine}': expected torch, bitpack, onnxruntime or openvino")
    if engine == "bitpack" and not exported:
        raise ConfigError(f"{path}: --engine bitpack runs `bitnas export` files; export this checkpoint first")
    ck = read_export(path) if exported else load_checkpoint(path)
    spec = ck.get("arch") if isinstance(ck, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("network"), dict) or not (exported or "model" in ck):
        raise BitnasError(f"{path}: not a bitnas training checkpoint or export (no stored architecture/weights)")
    net = spec["network"]
    stored = Genotype.from_dict(spec["genotype"], f"{path} genotype") if spec.get("genotype") is not None else None
    if genotype is not None and load_genotype(genotype) != stored:
        raise ConfigError(f"{path}: this checkpoint was trained for another genotype than --genotype {genotype} "
                          f"(it holds {stored})")
    if precision is not None and precision != net.get("precision"):
        raise ConfigError(f"{path}: this checkpoint holds a {net.get('precision')} network, not --precision {precision}")
    size = (ck["input"].get("image_size") if exported else ck.get("image_size")) or 0
    if size:
        check_image_side(size, f"{path}: image_size")
    info = DistInfo(device=resolve_device(device))
    streamed = None if exported else checkpoint_test_loader(data, ck, batch_size, info.device)
    if streamed is not None:
        test = streamed.files
    else:
        kw = {"image_size": size} if size and data.split(":", 1)[0].strip() in ("imagefolder", "image-folder") else {}
        test = load_dataset(data, "test", **kw)
    c = test.input_shape[0]
    if c != net.get("in_channels") or test.num_classes != net.get("num_classes"):
        raise DataError(f"{data}: {c} channel(s) and {test.num_classes} classes, but the network in {path} takes "
                        f"{net.get('in_channels')} channel(s) and has {net.get('num_classes')} classes")
    if size and tuple(test.input_shape[1:]) != (size, size):
        h, w = test.input_shape[1:]
        raise DataError(f"{data}: {h}×{w} images, but the network in {path} was trained on {size}×{size} images; "
                        "evaluate it on data of that size (imagefolder data is resized to it)")
    if engine == "bitpack" and info.device.type != "cpu":
        raise ConfigError(f"--engine bitpack runs on the CPU, not --device {device}")
    model = (network_from_export(ck, str(path)) if exported else network_from_checkpoint(ck, str(path))).to(info.device)
    if engine == "bitpack":
        from bitnas.deploy.graph import EngineNetwork

        model = EngineNetwork(model, ck, threads=threads)
    loader = streamed if streamed is not None else BatchLoader(test, batch_size, shuffle=False, seed=0)
    m = evaluate_model(model, loader, info, info.device, "test")
    return {"top1": m["test_top1"], "top5": m["test_top5"], "loss": m["test_loss"], "num_images": m["test_images"],
            "checkpoint": str(path), "data": data, "dataset": test.name, "precision": net.get("precision"),
            "epoch": ck.get("epoch"), "engine": engine}

