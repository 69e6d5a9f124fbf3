"""1-bit inference on the bitpack engine against torch fp32 (oneDNN, channels-last), single thread.

Layers: a binary conv on the engine — packing its float NHWC input, the XNOR-popcount conv and
the fused output transform (α and a folded BN, float NHWC output) — against `F.conv2d` in fp32 on
channels-last tensors (oneDNN) of the same shape, batch 64:
3×3 64→64 at 14×14, 3×3 128→128 at 7×7, 3×3 256→256 at 7×7, 1×1 128→128 at 14×14.

Networks: an exported 1-bit network through `load_export(..., engine="bitpack")` against the same
network in torch fp32 (its fp32 twin: same modules, ReLU where the child has a sign, channels-last,
eval mode), batch 1 and 64, 3×32×32 inputs:
- bireal: the hand-designed Bi-Real network (`blocks=bireal`, stem width 64; 64/128/256 channels
  at 32/16/8 pixels; 6 cells of two sign → 3×3 conv → BN → + shortcut units);
- darts_v2: DARTS_V2 at C = 36, 20 cells (CIFAR), Bi-Real module structure (the project's recipe);
  `--full` adds the cpnas structure.

Every pair is timed interleaved in one process (alternating which runs first), one thread for
both; the figures are wall-clock medians and "ratio" is median(torch) / median(engine);
"paired" is the median of the per-round ratios, "cpu" the same ratio of thread-CPU-time
medians (it leaves out time other jobs take the core on a shared machine) and "best" the ratio
of the fastest CPU times (closest to an idle machine). The kernel ceiling is
the best rate of the dense core on L1-resident data (a 1×1 conv with 2048 input channels).

    .venv/bin/python benchmarks/inference.py                 # full run, a table
    .venv/bin/python benchmarks/inference.py --quick --json  # fewer repeats, one JSON object
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bitnas.deploy import engine, export_checkpoint, load_export  # noqa: E402
from bitnas.nets import arch_spec, build_network  # noqa: E402
from bitnas.space.genotypes import GENOTYPES  # noqa: E402
from bitnas.utils import save_checkpoint  # noqa: E402

CL = torch.channels_last
LAYERS = [("3x3 64->64 14x14", 64, 64, 14, 3), ("3x3 128->128 7x7", 128, 128, 7, 3),
          ("3x3 256->256 7x7", 256, 256, 7, 3), ("1x1 128->128 14x14", 128, 128, 14, 1)]
NETWORKS = {
    "bireal": dict(genotype=None, blocks="bireal", structure="bireal", init_channels=16, layers=6),
    "darts_v2": dict(genotype="DARTS_V2", structure="bireal", init_channels=36, layers=20),
    "darts_v2_cpnas": dict(genotype="DARTS_V2", structure="cpnas", init_channels=36, layers=20),
}


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, thread CPU) seconds of each function per round; the order alternates between rounds;
    one warm-up. CPU time leaves out the time other jobs of a shared machine take the core."""
    names = list(fns)
    for n in names:
        fns[n]()
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0, c0 = time.perf_counter(), time.thread_time()
            fns[n]()
            times[n].append((time.perf_counter() - t0, time.thread_time() - c0))
    return times


def summary(times: dict[str, list[tuple[float, float]]], ref: str, contender: str) -> dict[str, float]:
    wall = {n: statistics.median(t[0] for t in ts) for n, ts in times.items()}
    cpu = {n: statistics.median(t[1] for t in ts) for n, ts in times.items()}
    best = {n: min(t[1] for t in ts) for n, ts in times.items()}
    paired = statistics.median(a[0] / b[0] for a, b in zip(times[ref], times[contender]))
    return {f"{ref}_ms": 1e3 * wall[ref], f"{contender}_ms": 1e3 * wall[contender], "ratio": wall[ref] / wall[contender],
            "paired_ratio": paired, "cpu_ratio": cpu[ref] / cpu[contender], "cpu_best_ratio": best[ref] / best[contender]}


def bench_layer(name: str, ci: int, co: int, hw: int, k: int, rounds: int, batch: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, ci, hw, hw, generator=g).contiguous(memory_format=CL)
    w = torch.randn(co, ci, k, k, generator=g).contiguous(memory_format=CL)
    conv = engine.BinaryConv((w < 0).numpy(), ci, padding=(k // 2, k // 2))
    conv.set_transform(torch.rand(co, generator=g).numpy(), torch.randn(co, generator=g).numpy())
    xn = x.permute(0, 2, 3, 1).numpy()

    def binary() -> object:
        return conv(engine.pack(xn), want=("floats",))

    def fp32() -> object:
        return F.conv2d(x, w, None, 1, k // 2)

    with torch.inference_mode():
        t = interleaved({"torch_fp32": fp32, "bitpack": binary}, rounds)
    macs = batch * hw * hw * co * ci * k * k
    s = summary(t, "torch_fp32", "bitpack")
    return {"name": name, "batch": batch, **s, "binary_gmacs": macs / (s["bitpack_ms"] * 1e6),
            "fp32_gmacs": macs / (s["torch_fp32_ms"] * 1e6)}


def kernel_ceiling(reps: int = 40) -> dict:
    """Binary MACs per second of the dense core on L1-resident data: the best of `reps` runs, timed
    in this thread's CPU time so that a shared machine's preemptions do not count."""
    ci, co, n, hw = 2048, 256, 2, 6
    rng = np.random.default_rng(0)
    conv = engine.BinaryConv(rng.random((co, ci, 1, 1)) < 0.5, ci)
    bits = engine.pack(rng.standard_normal((n, hw, hw, ci)).astype(np.float32))
    ints = np.empty((n, hw, hw, co), np.int32)
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        for _ in range(10):
            conv.run(bits, out_ints=ints)
        best = min(best, (time.thread_time() - t0) / 10)
    return {"binary_gmacs": n * hw * hw * co * ci / best / 1e9, "isa": engine.resolve_isa()}


def make_export(key: str, tmp: Path) -> tuple[Path, torch.nn.Module]:
    """Export the 1-bit network `key` (random weights, BN statistics of a few random batches) and
    build its fp32 twin."""
    spec = dict(NETWORKS[key])
    gname = spec.pop("genotype")
    genotype = GENOTYPES.get(gname) if gname else None
    kw = dict(style="cifar", num_classes=10, in_channels=3, **spec)
    torch.manual_seed(0)
    child = build_network(genotype, precision="binary", **kw)
    child.train()
    with torch.no_grad():
        for _ in range(2):
            child(torch.randn(32, 3, 32, 32))
    ck, out = tmp / f"{key}.pt", tmp / f"{key}.bitnas"
    save_checkpoint(ck, {"arch": arch_spec(genotype, precision="binary", **kw), "model": child.state_dict(),
                         "image_size": 32})
    export_checkpoint(ck, out)
    twin = build_network(genotype, precision="fp32", **kw).eval().to(memory_format=CL)
    return out, twin


def bench_network(key: str, path: Path, twin: torch.nn.Module, batch: int, rounds: int) -> dict:
    net = load_export(path, "bitpack")
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=CL)
    with torch.inference_mode():
        t = interleaved({"torch_fp32": lambda: twin(x), "bitpack": lambda: net(x)}, rounds)
    return {"name": key, "batch": batch, **summary(t, "torch_fp32", "bitpack")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (about 2 minutes on 2 shared cores)")
    p.add_argument("--full", action="store_true", help="more repeats and the cpnas DARTS_V2 network too")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--skip-networks", action="store_true", help="layers and kernel ceiling only")
    a = p.parse_args()
    engine.extension()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    layer_rounds, net_rounds = (9, {1: 9, 64: 3}) if a.quick else ((25, {1: 21, 64: 7}) if a.full else (15, {1: 15, 64: 5}))
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "isa": engine.resolve_isa(),
                                "torch": torch.__version__, "onednn": torch.backends.mkldnn.is_available(),
                                "threads": 1},
                    "kernel": kernel_ceiling(), "layers": [], "networks": []}
    for spec in LAYERS:
        result["layers"].append(bench_layer(*spec, rounds=layer_rounds))
    if not a.skip_networks:
        keys = ["bireal", "darts_v2"] + (["darts_v2_cpnas"] if a.full else [])
        with tempfile.TemporaryDirectory() as tmp:
            for key in keys:
                path, twin = make_export(key, Path(tmp))
                for batch in (1, 64):
                    result["networks"].append(bench_network(key, path, twin, batch, net_rounds[batch]))
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    if a.json:
        print(json.dumps(result))
        return 0
    m, k = result["machine"], result["kernel"]
    print(f"torch {m['torch']} (oneDNN {m['onednn']}), engine isa {m['isa']}, 1 thread; medians of interleaved runs")
    print(f"kernel ceiling (L1-resident 1x1 conv, 2048 channels, CPU time): {k['binary_gmacs']:.0f} G binary MACs/s")
    print(f"{'layer (batch 64)':<22} {'torch fp32':>11} {'bitpack':>9} {'ratio':>6} {'paired':>7} {'cpu':>6} {'best':>6}")
    for r in result["layers"]:
        print(f"{r['name']:<22} {r['torch_fp32_ms']:9.2f}ms {r['bitpack_ms']:7.2f}ms {r['ratio']:5.2f}x "
              f"{r['paired_ratio']:6.2f}x {r['cpu_ratio']:5.2f}x {r['cpu_best_ratio']:5.2f}x")
    for r in result["networks"]:
        print(f"{r['name'] + ' batch ' + str(r['batch']):<22} {r['torch_fp32_ms']:9.1f}ms {r['bitpack_ms']:7.1f}ms "
              f"{r['ratio']:5.2f}x {r['paired_ratio']:6.2f}x {r['cpu_ratio']:5.2f}x {r['cpu_best_ratio']:5.2f}x")
    print(f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
