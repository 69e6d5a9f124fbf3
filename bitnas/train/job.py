"""A training job, as `bitnas train`, the demo and the studies run it: check everything, load the
data once, obtain the fp32 parent when the method needs one, train with a `Trainer`, evaluate the
selected epoch on the test split once, write result.json."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
import torch.distributed as dist

from bitnas.common.machine import machine_info
from bitnas.common import signals
from bitnas.common.amp import configure_backends
from bitnas.common.distributed import DistInfo, barrier, broadcast_object, cleanup, init_distributed, on_main_rank
from bitnas.nets import arch_spec
from bitnas.nets.limits import check_build_kwargs, check_input_size
from bitnas.run import RunDir, check_out, clear_run, default_out
from bitnas.space.genotypes import Genotype, build_hints, load_genotype
from bitnas.train.build import build_kwargs, check_resumable
from bitnas.train.config import TrainConfig
from bitnas.train.data import TrainData, load_train_data
from bitnas.train.parent import load_parent_checkpoint, obtain_parent
from bitnas.train.trainer import Trainer
from bitnas.common.checkpoint import load_checkpoint

log = logging.getLogger("bitnas")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg` (under torchrun: on every process); returns final metrics and file paths.

    Keys: out, last, best, parent (path or None), metrics (last epoch's record), best_metric
    ({key, value, epoch}), test_top1, parent_test_top1 (or None), seconds (wall clock over every
    process of the run, resumes included).
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    configure_backends(cfg.cudnn_benchmark)
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
        "seconds": round(trainer.elapsed(), 3), "machine": machine_info(),
    }
    run.write_json("result.json", result)
    return result


def check_network(cfg: TrainConfig, data: TrainData, genotype: Genotype | None) -> None:
    """The network `cfg` describes can be built for `data`: known op settings, sizes in range,
    images large enough for its stride-2 stages."""
    kw = build_kwargs(cfg, data, cfg.precision)
    check_build_kwargs(kw, "train", multiplier=len(genotype.normal_concat) if genotype is not None else 4)
    check_input_size(cfg.style, cfg.layers, data.image_size, f"data {cfg.data}", blocks=cfg.network)
