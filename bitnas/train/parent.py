"""The frozen fp32 parent of the Child-Parent, distillation and init-from-parent methods: loaded
from `parent_checkpoint` (checked against the child) or trained in `<out>/parent/`."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitnas.common.distributed import DistInfo, barrier
from bitnas.errors import BitnasError, ConfigError
from bitnas.nets import network_from_checkpoint
from bitnas.run import RunDir, clear_run
from bitnas.space.genotypes import Genotype
from bitnas.train.build import build_kwargs
from bitnas.train.config import TrainConfig
from bitnas.train.data import TrainData
from bitnas.train.evaluate import evaluate_model
from bitnas.train.trainer import Trainer
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import atomic_write_bytes

log = logging.getLogger("bitnas")


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
