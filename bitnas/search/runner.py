"""Drive a search: data split → strategy → per-unit metrics and checkpoints → genotype.json.

Every unit ends with an atomic `last.pt` holding the strategy state and every RNG state, so a
search killed at any point resumes (`resume=True`) to the same α and genotype.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import torch
import torch.distributed as dist

from bitnas.data import load_dataset, take_subset, train_val_split
from bitnas.errors import ConfigError
from bitnas.run import RunDir, default_out
from bitnas.search.config import SearchConfig
from bitnas.search.strategy import STRATEGIES, SearchContext, SearchStrategy, check_strategy_keys
from bitnas.utils import load_checkpoint, resolve_device, rng_state, save_checkpoint, seed_everything, set_rng_state, truncate_jsonl

log = logging.getLogger("bitnas")

# Test hooks: SIGKILL after computing unit N (before it is logged and checkpointed), and a dump
# of every rank's final strategy state to DIR/state_rank<r>.pt (multi-process equality tests).
KILL_AT_UNIT_ENV = "BITNAS_TEST_KILL_AT_UNIT"
DUMP_STATE_ENV = "BITNAS_TEST_DUMP_STATE"


def init_process_group(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun group (gloo on CPU, nccl on CUDA) when launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def make_context(cfg: SearchConfig) -> SearchContext:
    device = resolve_device(cfg.device)
    rank, world = init_process_group(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if not cfg.out:
        raise ConfigError("out: a run directory is required")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")
    full = load_dataset(cfg.data, "train")
    ds = take_subset(full, cfg.train_subset, cfg.seed) if cfg.train_subset else full
    train_idx, val_idx = train_val_split(ds.labels, cfg.val_fraction, cfg.seed)
    return SearchContext(cfg=cfg, device=device, train_set=ds.subset(train_idx), val_set=ds.subset(val_idx),
                         run=RunDir(cfg.out, writer=rank == 0), rank=rank, world_size=world)


def _checkpoint(ctx: SearchContext, strat: SearchStrategy, records: int, elapsed: float) -> None:
    if ctx.rank != 0:
        return
    save_checkpoint(ctx.run.file("last.pt"), {
        "kind": "search", "strategy_name": strat.name, "strategy": strat.state_dict(), "rng": rng_state(),
        "records": records, "elapsed": elapsed, "config": _cfg_dict(ctx.cfg),
    })


def _cfg_dict(cfg: SearchConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


def run_search(cfg: SearchConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a search; returns the summary also written to genotype.json."""
    from bitnas.search import strategies  # noqa: F401 - registers every strategy

    check_strategy_keys(cfg, STRATEGIES.get(cfg.strategy))
    if not cfg.out:
        cfg.out = default_out("search")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be ≥ 0, got {cfg.threads}")
    torch.set_num_threads(cfg.threads or 1)
    seed_everything(cfg.seed)
    ctx = make_context(cfg)
    strat = STRATEGIES.get(cfg.strategy)(ctx)
    records, elapsed = 0, 0.0
    last = ctx.run.file("last.pt")
    if resume and last.exists():
        ck = load_checkpoint(last, map_location=ctx.device)
        if ck.get("strategy_name") != strat.name:
            raise ConfigError(f"{last}: made by strategy '{ck.get('strategy_name')}', not '{strat.name}'")
        strat.load_state_dict(ck["strategy"])
        set_rng_state(ck["rng"])
        records, elapsed = int(ck["records"]), float(ck["elapsed"])
        if ctx.rank == 0:
            truncate_jsonl(ctx.run.file("metrics.jsonl"), records)
        log.info("resumed %s search from %s after %d units", strat.name, last, records)
    elif ctx.rank == 0 and ctx.run.file("metrics.jsonl").exists():
        ctx.run.file("metrics.jsonl").unlink()
    ctx.run.save_config(cfg, {"resolved": {"space": strat.space.name, "strategy": strat.name}})
    log.info("search: strategy %s, space %s (%d ops), %d train / %d val images, device %s, %d process(es)",
             strat.name, strat.space.name, len(strat.space.ops), len(ctx.train_set), len(ctx.val_set), ctx.device,
             ctx.world_size)
    kill_at_unit = int(os.environ.get(KILL_AT_UNIT_ENV) or 0)
    while not strat.finished:
        t0 = time.perf_counter()
        rec = strat.run_unit()
        dt = time.perf_counter() - t0
        if kill_at_unit and records + 1 == kill_at_unit:
            os.kill(os.getpid(), signal.SIGKILL)
        elapsed += dt
        rec.setdefault("seconds", dt)
        rec["elapsed"] = elapsed
        rec["images"] = strat.images
        ctx.run.log_metrics(rec)
        records += 1
        _checkpoint(ctx, strat, records, elapsed)
    g = strat.genotype()
    best = strat.best_genotype()
    result = {
        "genotype": g.to_dict(), "genotype_text": str(g),
        "best_genotype": best.to_dict() if best else None,
        "strategy": strat.name, "space": strat.space.name, "stop_reason": strat.stop_reason or "completed",
        "search_seconds": elapsed, "images_processed": strat.images, "units": records,
        "world_size": ctx.world_size,
        "structure": strat.op_config("binary").structure, "activation": strat.op_config("binary").activation,
    }
    result.update(strat.result_info())
    ctx.run.write_json("genotype.json", result)
    dump = os.environ.get(DUMP_STATE_ENV)
    if dump:
        save_checkpoint(os.path.join(dump, f"state_rank{ctx.rank}.pt"),
                        {"strategy": strat.state_dict(), "result": result})
    if ctx.rank == 0:
        log.info("search cost: %.1f s wall, %d images processed (%s)", elapsed, strat.images, result["stop_reason"])
        log.info("genotype: %s", g)
        log.info("wrote %s", ctx.run.file("genotype.json"))
    if ctx.world_size > 1:
        dist.barrier()
    return result
