"""`bitnas demo`: search → train the found 1-bit network (plain cross-entropy by default, `method=cp` for
the fp32 parent and the Child-Parent loss) → evaluate → summary table → pictures.

Runs on the embedded Fashion-MNIST subset by default, sized to finish in a few minutes on a
2-core CPU. Every stage writes its own run directory under `out`.
"""
from __future__ import annotations

import logging
import shutil
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bitnas.config import opt, to_yaml
from bitnas.errors import ConfigError
from bitnas.run import check_out, run_kind
from bitnas.common.files import atomic_write_json, atomic_write_text, to_json

log = logging.getLogger("bitnas")


@dataclass
class DemoConfig:
    """The demo's settings: small enough for a few minutes on 2 cores."""

    strategy: str = opt("cpnas", "search strategy: cpnas, ubnas, pcdarts, darts, random, zero_cost", flag=True)
    data: str = opt("fashion-mnist-embedded", "dataset NAME[:PATH]", flag=True)
    out: str = opt("runs/demo", "run directory", flag=True)
    init_channels: int = opt(8, "initial channels C (search and training)", flag=True)
    layers: int = opt(3, "cells (search and training)", flag=True)
    batch_size: int = opt(32, "mini-batch size", flag=True)
    search_subset: int = opt(1000, "training images used by the search (split into train/val halves)")
    search_epochs: int = opt(2, "epochs of differentiable / random searches")
    rounds: int = opt(1, "CP-NAS sampling rounds T")
    sample_steps: int = opt(3, "CP-NAS training steps per sampled path")
    val_subset: int = opt(200, "CP-NAS validation images per sample")
    train_subset: int = opt(3000, "training images for the final training (0 = all of the data set)")
    epochs: int = opt(3, "training epochs of the 1-bit child (and of its fp32 parent)", flag=True)
    seed: int = opt(0, "random seed", flag=True)
    device: str = opt("auto", "auto, cpu or cuda", flag=True)
    progress: str = opt("auto", "progress bars: auto (terminal only, never in CI), on, off", choices=("auto", "on", "off"))
    lr: float = opt(5e-3, "Adam learning rate of the final training (5e-3 learned faster than 1e-3 at this budget)")
    method: str = opt("plain", "training method of the child: plain (cross-entropy; on validation over 3 seeds in "
                               "study_methods_fmnist_cpu tied with KD, above CP loss and two-stage, no parent needed) or cp (kernel-level "
                               "Child-Parent loss, trains the fp32 parent first)", choices=("plain", "cp"))


def _search(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from bitnas.search import strategies  # noqa: F401 - registers the strategies
    from bitnas.search.config import SearchConfig
    from bitnas.search.runner import run_search
    from bitnas.search.strategy import STRATEGIES, keys_read

    values = dict(strategy=cfg.strategy, data=cfg.data, train_subset=cfg.search_subset, seed=cfg.seed,
                  device=cfg.device, out=str(out / "search"), init_channels=cfg.init_channels, layers=cfg.layers,
                  batch_size=cfg.batch_size, epochs=cfg.search_epochs, rounds=cfg.rounds,
                  sample_steps=cfg.sample_steps, val_subset=cfg.val_subset, progress=cfg.progress,
                  force=True)
    reads = keys_read(STRATEGIES.get(cfg.strategy))
    return run_search(SearchConfig(**{k: v for k, v in values.items() if k in reads}))


def _train(cfg: DemoConfig, out: Path, genotype_file: Path) -> dict[str, Any]:
    from bitnas.train.config import TrainConfig
    from bitnas.train.job import train

    tcfg = TrainConfig(genotype=str(genotype_file), data=cfg.data, train_subset=cfg.train_subset, seed=cfg.seed,
                       device=cfg.device, out=str(out / "train"), init_channels=cfg.init_channels, layers=cfg.layers,
                       batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr, method=cfg.method, progress=cfg.progress,
                       force=True)
    return train(tcfg)


def _summary(checkpoint: str) -> dict[str, Any]:
    from bitnas.nets import network_from_spec
    from bitnas.summary import summarize
    from bitnas.common.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    net = network_from_spec(ck["arch"])
    size = int(ck.get("image_size") or 28)
    return summarize(net, (ck["arch"]["network"]["in_channels"], size, size)).to_dict(per_layer=False)


def format_table(res: dict[str, Any]) -> str:
    """The one table the demo prints."""
    g = res["genotype"]
    s = res["summary"]

    def cell(edges: list) -> str:
        return ", ".join(f"{op}←{i}" for op, i in edges)

    rows = [
        ("strategy", res["strategy"]),
        ("normal cell", cell(g["normal"])),
        ("reduction cell", cell(g["reduce"])),
        ("1-bit test top-1", f"{res['child_top1']:.2f} %" if res["child_top1"] is not None else "-"),
        *([("fp32 parent test top-1", f"{res['parent_top1']:.2f} %")] if res["parent_top1"] is not None else []),
        ("params 1-bit / 32-bit", f"{s['params_1bit']:,} / {s['params_32bit']:,}"),
        ("memory (child / fp32)", f"{s['memory_bytes'] / 1024:.1f} KiB / {s['memory_fp32_bytes'] / 1024:.1f} KiB "
                                  f"({s['compression']:.1f}x)"),
        ("OPs = FLOPs + BOPs/64", f"{s['ops'] / 1e6:.2f} M (FLOPs {s['flops'] / 1e6:.2f} M, BOPs {s['bops'] / 1e6:.2f} M)"),
        ("search time", f"{res['search_seconds']:.0f} s ({res['search_images']:,} images)"),
        ("training time", f"{res['train_seconds']:.0f} s" + (" (parent + child)" if res["parent_top1"] is not None else "")),
        ("run directory", res["out"]),
    ]
    w = max(len(k) for k, _ in rows)
    line = "+" + "-" * (w + 2) + "+" + "-" * 72 + "+"
    out = [line]
    for k, v in rows:
        chunks = textwrap.wrap(v, 70) or [""]
        for n, c in enumerate(chunks):
            out.append(f"| {(k if n == 0 else ''):<{w}} | {c:<70} |")
    out.append(line)
    return "\n".join(out)


def _collect(out: Path) -> None:
    """Top-level run directory: genotype.json, one metrics.jsonl (records tagged by stage), plots/."""
    from bitnas.plots import plot_run
    from bitnas.common.files import read_jsonl

    shutil.copyfile(out / "search" / "genotype.json", out / "genotype.json")
    stages = (("search", out / "search"), ("parent", out / "train" / "parent"), ("child", out / "train"))
    lines = []
    for stage, d in stages:
        for r in read_jsonl(d / "metrics.jsonl"):
            lines.append(to_json({"stage": stage, **r}) + "\n")
        if d.is_dir():
            for png in plot_run(d):
                shutil.copyfile(png, out / "plots" / (png.name if stage == "search" else f"{stage}_{png.name}"))
    atomic_write_text(out / "metrics.jsonl", "".join(lines))


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the figures of the table (also written to demo.json)."""
    out = Path(cfg.out)
    kind = run_kind(out)
    if kind not in (None, "demo"):
        raise ConfigError(f"--out {out}: holds a {kind} run; the demo writes a tree of its own there, use another --out")
    check_out(out, "demo", resume=False, force=True)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump({"command": "demo"}) + to_yaml(cfg))
    t0 = time.time()
    log.info("demo 1/3: %s search on %s", cfg.strategy, cfg.data)
    s = _search(cfg, out)
    log.info("demo 2/3: training the found network (%s)", "fp32 parent, then the 1-bit child with the CP loss"
             if cfg.method == "cp" else "the 1-bit network, plain cross-entropy")
    t = _train(cfg, out, out / "search" / "genotype.json")
    log.info("demo 3/3: summary and pictures")
    res = {
        "strategy": cfg.strategy, "genotype": s["genotype"], "out": str(out),
        "child_top1": t["test_top1"], "parent_top1": t.get("parent_test_top1"),
        "summary": _summary(t["last"]), "search_seconds": s["search_seconds"], "search_images": s["images_processed"],
        "train_seconds": t["seconds"], "total_seconds": time.time() - t0,
    }
    _collect(out)
    atomic_write_json(out / "demo.json", res)
    return res
