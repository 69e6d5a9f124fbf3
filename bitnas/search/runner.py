"""Drive a search: data split → strategy → per-unit metrics and checkpoints → genotype.json.

Every unit ends with an atomic `last.pt` holding the strategy state and every RNG state, so a
search killed at any point resumes (`resume=True`) to the same α and genotype; SIGINT/SIGTERM
stop at the next step and write `last.pt` with the partial unit first.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any, Callable

import torch
import torch.distributed as dist

from bitnas.common.machine import machine_info
from bitnas.common import faults
from bitnas.common.distributed import init_distributed, on_main_rank
from bitnas.common.signals import StopRequest, graceful_stop
from bitnas.config import check_resume_config
from bitnas.data import ImageDataset, check_training_split, load_dataset, take_subset, train_val_split
from bitnas.errors import ConfigError, DataError
from bitnas.run import RunDir, check_out, clear_run, default_out
from bitnas.search.config import SearchConfig
from bitnas.search.strategy import STRATEGIES, SearchContext, SearchStrategy, UnitInterrupted, check_strategy_keys
from bitnas.common.checkpoint import load_checkpoint, save_checkpoint
from bitnas.common.files import truncate_jsonl
from bitnas.common.rng import rng_state, seed_everything, set_rng_state

log = logging.getLogger("bitnas")


def load_search_data(cfg: SearchConfig, world_size: int,
                     load: Callable[..., ImageDataset] = load_dataset) -> tuple[ImageDataset, ImageDataset]:
    """(train, val): the training images (optionally a class-balanced subset) split in two; refused
    when the train part cannot fill a batch or misses a class. `load` reads the dataset (a study's
    checks pass a cached one)."""
    full = load(cfg.data, "train")
    ds = take_subset(full, cfg.train_subset, cfg.seed) if cfg.train_subset else full
    train_idx, val_idx = train_val_split(ds.labels, cfg.val_fraction, cfg.seed)
    if len(val_idx) == 0:
        raise DataError(f"val_fraction {cfg.val_fraction}: leaves no validation image of the {len(ds)} training images")
    train_set, val_set = ds.subset(train_idx), ds.subset(val_idx)
    what = f"train_subset {cfg.train_subset}" if cfg.train_subset else f"data {cfg.data}"
    check_training_split(train_set, cfg.batch_size, world_size, f"{what} (the search trains on {1 - cfg.val_fraction:g} of it)")
    return train_set, val_set


def make_context(cfg: SearchConfig, stop: StopRequest | None = None) -> SearchContext:
    """What a strategy runs in: process group and device, the data splits, and the run directory
    (not created: nothing touches the disk until the run has been checked)."""
    info = init_distributed(cfg.device)
    train_set, val_set = load_search_data(cfg, info.world_size)
    return SearchContext(cfg=cfg, device=info.device, train_set=train_set, val_set=val_set,
                         run=RunDir(cfg.out, writer=info.is_main, create=False), rank=info.rank,
                         world_size=info.world_size, stop=stop or StopRequest())


def _checkpoint(ctx: SearchContext, strat: SearchStrategy, records: int, elapsed: float) -> None:
    if ctx.rank != 0:
        return
    save_checkpoint(ctx.run.file("last.pt"), {
        "kind": "search", "strategy_name": strat.name, "strategy": strat.state_dict(), "rng": rng_state(),
        "records": records, "elapsed": elapsed, "config": asdict(ctx.cfg),
    })


def run_search(cfg: SearchConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a search; returns the summary also written to genotype.json.

    Everything is checked (config, strategy settings, --out, data, the checkpoint to resume)
    before the run directory is touched. SIGINT/SIGTERM stop at the next step with a resumable
    `last.pt` and raise `Interrupted`."""
    from bitnas.search import strategies  # noqa: F401 - registers every strategy

    if not cfg.out:
        cfg.out = default_out("search")
    cfg.validate()
    strategy = STRATEGIES.get(cfg.strategy)
    check_strategy_keys(cfg, strategy)
    strategy.check_config(cfg)
    torch.set_num_threads(cfg.threads or 1)
    with graceful_stop() as stop:
        return _run(cfg, strategy, resume, stop)


def _run(cfg: SearchConfig, strategy: type[SearchStrategy], resume: bool, stop: StopRequest) -> dict[str, Any]:
    info = init_distributed(cfg.device)
    on_main_rank(lambda: check_out(cfg.out, "search", resume, cfg.force), info)
    seed_everything(cfg.seed)
    ctx = make_context(cfg, stop)
    run = ctx.run
    strat = strategy(ctx)
    records, elapsed = 0, 0.0
    last = run.file("last.pt")
    ck = load_checkpoint(last, map_location=ctx.device) if resume and last.exists() else None
    if ck is not None:
        if ck.get("kind") != "search" or ck.get("strategy_name") != strat.name:
            made = f"strategy '{ck.get('strategy_name')}'" if ck.get("kind") == "search" else "another command"
            raise ConfigError(f"{last}: made by {made}, not a '{strat.name}' search")
        check_resume_config(ck.get("config") or {}, cfg, str(last))
        strat.load_state_dict(ck["strategy"])
        set_rng_state(ck["rng"])
        records, elapsed = int(ck["records"]), float(ck["elapsed"])
    elif resume:
        log.info("%s: no last.pt to resume from; starting from the beginning", run.path)
    if ctx.rank == 0 and ck is None:
        gone = clear_run(run.path)
        if gone:
            log.warning("%s: replacing %s of an earlier run", run.path, ", ".join(gone))
    run.create()
    if ck is not None:
        if ctx.rank == 0:
            truncate_jsonl(run.file("metrics.jsonl"), records)
        log.info("resumed %s search from %s after %d units", strat.name, last, records)
    run.save_config(cfg, {"resolved": {"space": strat.space.name, "strategy": strat.name}}, command="search")
    log.info("search: strategy %s, space %s (%d ops), %d train / %d val images, device %s, %d process(es)",
             strat.name, strat.space.name, len(strat.space.ops), len(ctx.train_set), len(ctx.val_set), ctx.device,
             ctx.world_size)
    hint = f"continue with the same command and --resume (--out {cfg.out})"
    while not strat.finished:
        if strat.steps.stop_requested():
            _checkpoint(ctx, strat, records, elapsed)
            raise strat.steps.interrupted(hint)
        t0 = time.perf_counter()
        try:
            rec = strat.run_unit()
        except UnitInterrupted:
            _checkpoint(ctx, strat, records, elapsed + time.perf_counter() - t0)
            raise strat.steps.interrupted(hint) from None
        dt = time.perf_counter() - t0
        faults.point("search.unit", records + 1)
        elapsed += dt
        rec.setdefault("seconds", dt)
        rec["elapsed"] = elapsed
        rec["images"] = strat.images
        run.log_metrics(rec)
        records += 1
        _checkpoint(ctx, strat, records, elapsed)
    g = strat.genotype()
    best = strat.best_genotype()
    result = {
        "genotype": g.to_dict(), "genotype_text": str(g),
        "best_genotype": best.to_dict() if best else None,
        "strategy": strat.name, "space": strat.space.name, "stop_reason": strat.stop_reason or "completed",
        "search_seconds": elapsed, "images_processed": strat.images, "units": records,
        "world_size": ctx.world_size, "machine": machine_info(),
        "structure": strat.op_config("binary").structure, "activation": strat.op_config("binary").activation,
    }
    result.update(strat.result_info())
    run.write_json("genotype.json", result)
    faults.point("search.end", records, state=lambda: {"strategy": strat.state_dict(), "result": result})
    if ctx.rank == 0:
        log.info("search cost: %.1f s wall, %d images processed (%s)", elapsed, strat.images, result["stop_reason"])
        log.info("genotype: %s", g)
        log.info("wrote %s", run.file("genotype.json"))
    if ctx.world_size > 1:
        dist.barrier()
    return result
