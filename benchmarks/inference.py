"""1-bit inference on the bitpack engine against torch fp32 (oneDNN, channels-last) and, when
installed (`pip install -e '.[bench]'`), ONNX Runtime and OpenVINO (benchmarks/runtimes.py).

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

Per layer OpenVINO's BinaryConvolution and a bf16 OpenVINO conv join in (`ratio_ov_binary`,
`ratio_ov_bf16`: their median over the engine's); per network ONNX Runtime fp32/int8 and OpenVINO
fp32/bf16/int8 on the fp32 twin (`ratio_ort_fp32`, `ratio_ort_int8`, `ratio_ov_fp32`,
`ratio_ov_bf16`, `ratio_ov_int8`; null when the runtime is absent), plus a 2-thread row per
network. "isa_ran" says which row ran: per layer the row the automatic choice picked (on an AMX
CPU amx or its rival avx512, timed per layer on first use), per network the count of binary convs
on each row. `--also-isa avx2` times that row of the engine too, interleaved in the same rounds
(`also_isa`), so a faster row's gain and a slower row's regressions show on the same machine load.

All contenders of a row are timed interleaved in one process (random order per round), one thread
each; the figures are wall-clock medians and "ratio" is median(torch) / median(engine);
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
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import runtimes  # noqa: E402
from bitnas.common.machine import cpu_model  # noqa: E402
from bitnas.deploy import engine, export_checkpoint, load_export  # noqa: E402
from bitnas.nets import arch_spec, build_network  # noqa: E402
from bitnas.space.genotypes import GENOTYPES  # noqa: E402
from bitnas.common.checkpoint import save_checkpoint

CL = torch.channels_last
LAYERS = [("3x3 64->64 14x14", 64, 64, 14, 3), ("3x3 128->128 7x7", 128, 128, 7, 3),
          ("3x3 256->256 7x7", 256, 256, 7, 3), ("1x1 128->128 14x14", 128, 128, 14, 1)]
NETWORKS = {
    "bireal": dict(genotype=None, blocks="bireal", structure="bireal", init_channels=16, layers=6),
    "darts_v2": dict(genotype="DARTS_V2", structure="bireal", init_channels=36, layers=20),
    "darts_v2_cpnas": dict(genotype="DARTS_V2", structure="cpnas", init_channels=36, layers=20),
}


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, process CPU) seconds of each function per round, in a seeded random order per round;
    one warm-up. CPU time leaves out the time other jobs of a shared machine take the core, and
    counts the worker threads of ONNX Runtime / OpenVINO / the engine's pool (one thread each here).
    The random order lets each contender follow each other about equally often: the alternating
    order it replaced ran the first contender (torch) twice in a row every other round, on its own
    warm caches, and the second (the engine) always after it, on caches torch had just swept."""
    names = list(fns)
    for n in names:
        fns[n]()
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    order = random.Random(",".join(names))
    for _ in range(rounds):
        for n in order.sample(names, len(names)):
            t0, c0 = time.perf_counter(), time.process_time()
            fns[n]()
            times[n].append((time.perf_counter() - t0, time.process_time() - c0))
    return times


Medians = dict[str, float]


def medians(times: dict[str, list[tuple[float, float]]]) -> tuple[Medians, Medians, Medians]:
    """Per contender of `interleaved`: (median wall seconds, median CPU seconds, fastest CPU seconds)."""
    wall = {n: statistics.median(t[0] for t in ts) for n, ts in times.items()}
    cpu = {n: statistics.median(t[1] for t in ts) for n, ts in times.items()}
    best = {n: min(t[1] for t in ts) for n, ts in times.items()}
    return wall, cpu, best


def summary(times: dict[str, list[tuple[float, float]]], ref: str, contender: str) -> dict[str, float]:
    wall, cpu, best = medians(times)
    paired = statistics.median(a[0] / b[0] for a, b in zip(times[ref], times[contender]))
    return {f"{ref}_ms": 1e3 * wall[ref], f"{contender}_ms": 1e3 * wall[contender], "ratio": wall[ref] / wall[contender],
            "paired_ratio": paired, "cpu_ratio": cpu[ref] / cpu[contender], "cpu_best_ratio": best[ref] / best[contender]}


def contenders(times: dict[str, list[tuple[float, float]]], names: list[str]) -> dict[str, float | None]:
    """Per other contender: its median, ratio_<name> = median(name) / median(bitpack) of wall time,
    cpu_ratio_<name> of CPU-time medians and best_ratio_<name> of the fastest CPU times (null when absent)."""
    wall, cpu, best = medians(times)
    out: dict[str, float | None] = {}
    for n in names:
        out[f"{n}_ms"] = 1e3 * wall[n] if n in wall else None
        out[f"ratio_{n}"] = wall[n] / wall["bitpack"] if n in wall else None
        out[f"cpu_ratio_{n}"] = cpu[n] / cpu["bitpack"] if n in cpu else None
        out[f"best_ratio_{n}"] = best[n] / best["bitpack"] if n in best else None
    return out


def also_isa(times: dict[str, list[tuple[float, float]]], isas: list[str]) -> dict[str, dict[str, float]]:
    """The extra engine rows: median, ratio against torch, and the main row's speed-up over them."""
    wall, cpu, _ = medians(times)
    return {i: {"ms": 1e3 * wall[f"bitpack_{i}"], "ratio": wall["torch_fp32"] / wall[f"bitpack_{i}"],
                "cpu_ratio": cpu["torch_fp32"] / cpu[f"bitpack_{i}"],
                "speedup_of_main_row": wall[f"bitpack_{i}"] / wall["bitpack"],
                "cpu_speedup_of_main_row": cpu[f"bitpack_{i}"] / cpu["bitpack"]} for i in isas}


def bench_layer(name: str, ci: int, co: int, hw: int, k: int, rounds: int, batch: int = 64,
                extra_isas: tuple[str, ...] = ()) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, ci, hw, hw, generator=g).contiguous(memory_format=CL)
    w = torch.randn(co, ci, k, k, generator=g).contiguous(memory_format=CL)
    conv = engine.BinaryConv((w < 0).numpy(), ci, padding=(k // 2, k // 2))
    mul, add = torch.rand(co, generator=g).numpy(), torch.randn(co, generator=g).numpy()
    conv.set_transform(mul, add)
    xn = x.permute(0, 2, 3, 1).numpy()

    def binary(isa: str | None = None) -> object:
        return conv(engine.pack(xn, isa=isa), want=("floats",), isa=isa)

    def fp32() -> object:
        return F.conv2d(x, w, None, 1, k // 2)

    fns: dict[str, Callable[[], object]] = {"torch_fp32": fp32, "bitpack": binary}
    fns.update({f"bitpack_{i}": (lambda i=i: binary(i)) for i in extra_isas})
    fns.update(runtimes.layer_runners((w < 0).numpy(), mul, add, w.numpy(), np.ascontiguousarray(xn), k // 2))
    with torch.inference_mode():
        t = interleaved(fns, rounds)
    binary()  # the automatic row's choice for this layer, after any forced extra rows ran
    macs = batch * hw * hw * co * ci * k * k
    s = summary(t, "torch_fp32", "bitpack")
    return {"name": name, "batch": batch, "isa_ran": conv.last_isa, **s, **contenders(t, ["ov_binary", "ov_bf16"]),
            "also_isa": also_isa(t, list(extra_isas)), "binary_gmacs": macs / (s["bitpack_ms"] * 1e6),
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
    return {"binary_gmacs": n * hw * hw * co * ci / best / 1e9, "isa": engine.resolve_isa(), "isa_ran": conv.last_isa}


def with_bn_statistics(genotype: Any, precision: str, **kw: Any) -> torch.nn.Module:
    """A network of random weights (seed 0) whose BatchNorm statistics come from two random batches
    (train mode, left so): what every benchmark exports or runs."""
    torch.manual_seed(0)
    net = build_network(genotype, precision=precision, **kw)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(32, kw.get("in_channels", 3), 32, 32))
    return net


def make_export(key: str, tmp: Path) -> tuple[Path, torch.nn.Module]:
    """Export the 1-bit network `key` (random weights, BN statistics of a few random batches) and
    build its fp32 twin."""
    spec = dict(NETWORKS[key])
    gname = spec.pop("genotype")
    genotype = GENOTYPES.get(gname) if gname else None
    kw = dict(style="cifar", num_classes=10, in_channels=3, **spec)
    child = with_bn_statistics(genotype, "binary", **kw)
    ck, out = tmp / f"{key}.pt", tmp / f"{key}.bitnas"
    save_checkpoint(ck, {"arch": arch_spec(genotype, precision="binary", **kw), "model": child.state_dict(),
                         "image_size": 32})
    export_checkpoint(ck, out)
    twin = build_network(genotype, precision="fp32", **kw).eval().to(memory_format=CL)
    return out, twin


NET_CONTENDERS = ["ort_fp32", "ort_int8", "ov_fp32", "ov_bf16", "ov_int8"]


def bench_network(key: str, path: Path, twin: torch.nn.Module, onnx: tuple[Path | None, Path | None], batch: int,
                  rounds: int, threads: int = 1, extra_isas: tuple[str, ...] = ()) -> dict:
    net = load_export(path, "bitpack", threads=threads)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=CL)
    fns: dict[str, Callable[[], object]] = {"torch_fp32": lambda: twin(x), "bitpack": lambda: net(x)}
    for i in extra_isas:
        other = load_export(path, "bitpack", threads=threads, isa=i)
        fns[f"bitpack_{i}"] = lambda other=other: other(x)
    fns.update(runtimes.network_runners(*onnx, np.ascontiguousarray(x.numpy()), threads))
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            t = interleaved(fns, rounds)
        net(x)  # the rows the automatic choice ran each binary conv on
    finally:
        torch.set_num_threads(1)
    return {"name": key, "batch": batch, "threads": threads, "isa_ran": net.kernel_rows(),
            **summary(t, "torch_fp32", "bitpack"),
            **contenders(t, NET_CONTENDERS), "also_isa": also_isa(t, list(extra_isas))}


def machine() -> dict:
    """The CPU this ran on (model name and the features the engine reads), the engine's row, the runtimes."""
    model = cpu_model()
    feats = engine.cpu_features()
    return {"cpu": model, "isa": engine.resolve_isa(), "isa_features": feats,
            "isa_label": ", ".join(k for k, v in feats.items() if v and not k.startswith("os_")),
            "isas_supported": engine.supported_isas(), "torch": torch.__version__,
            "onednn": torch.backends.mkldnn.is_available(), "runtimes": runtimes.versions(),
            "runtimes_note": runtimes.missing_note(), "threads": 1,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def pair(wall: float | None, cpu: float | None) -> str:
    """"wall/cpu" ratios for the table ("—" when the contender is absent)."""
    return "—" if wall is None or cpu is None else f"{wall:.2f}/{cpu:.2f}x"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (a few minutes on 2 shared cores)")
    p.add_argument("--full", action="store_true", help="more repeats, 2-thread rows at batch 64 too, cpnas DARTS_V2")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--skip-networks", action="store_true", help="layers and kernel ceiling only")
    p.add_argument("--also-isa", action="append", default=[], metavar="ISA",
                   help="also time this row of the engine's ISA table, interleaved (e.g. avx2)")
    a = p.parse_args()
    engine.extension()
    extra = tuple(engine.resolve_isa(i) for i in a.also_isa)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    layer_rounds, net_rounds = (9, {1: 9, 64: 3}) if a.quick else ((25, {1: 21, 64: 7}) if a.full else (15, {1: 15, 64: 5}))
    result: dict = {"machine": machine(), "kernel": kernel_ceiling(), "layers": [], "networks": []}
    for spec in LAYERS:
        result["layers"].append(bench_layer(*spec, rounds=layer_rounds, extra_isas=extra))
    if not a.skip_networks:
        keys = ["bireal", "darts_v2"] + (["darts_v2_cpnas"] if a.full else [])
        with tempfile.TemporaryDirectory() as tmp:
            for key in keys:
                path, twin = make_export(key, Path(tmp))
                onnx = runtimes.onnx_models(twin, Path(tmp), key)
                for batch in (1, 64):
                    result["networks"].append(bench_network(key, path, twin, onnx, batch, net_rounds[batch],
                                                            extra_isas=extra))
                for batch in (1, 64) if a.full else (1,):
                    result["networks"].append(bench_network(key, path, twin, onnx, batch, net_rounds[batch], threads=2))
    result["notes"] = sorted(set(runtimes.SKIPPED))
    result["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    if a.json:
        print(json.dumps(result))
        return 0
    m, k = result["machine"], result["kernel"]
    print(f"{m['cpu']} ({m['isa_label']}); engine isa {m['isa']}; torch {m['torch']}; medians of interleaved runs")
    if m["runtimes_note"]:
        print(m["runtimes_note"])
    print(f"kernel ceiling (L1-resident 1x1 conv, 2048 channels, CPU time): {k['binary_gmacs']:.0f} G binary MACs/s")
    print("ratios: wall-clock median / CPU-time median (other jobs on the machine inflate wall time)")
    print(f"{'layer (batch 64)':<22} {'torch fp32':>11} {'bitpack':>9} {'vs torch':>12} {'vs OV bin':>12} {'vs OV bf16':>12}"
          "  ran on")
    for r in result["layers"]:
        print(f"{r['name']:<22} {r['torch_fp32_ms']:9.2f}ms {r['bitpack_ms']:7.2f}ms {pair(r['ratio'], r['cpu_ratio']):>12} "
              f"{pair(r['ratio_ov_binary'], r['cpu_ratio_ov_binary']):>12} {pair(r['ratio_ov_bf16'], r['cpu_ratio_ov_bf16']):>12}"
              f"  {r['isa_ran']}")
    print(f"{'network':<22} {'torch':>11} {'bitpack':>9} {'vs torch':>12} " + " ".join(f"{'vs ' + c:>12}" for c in NET_CONTENDERS))
    for r in result["networks"]:
        label = f"{r['name']} b{r['batch']} t{r['threads']}"
        print(f"{label:<22} {r['torch_fp32_ms']:9.1f}ms {r['bitpack_ms']:7.1f}ms {pair(r['ratio'], r['cpu_ratio']):>12} "
              + " ".join(f"{pair(r['ratio_' + c], r['cpu_ratio_' + c]):>12}" for c in NET_CONTENDERS)
              + "  " + ", ".join(f"{n} {k}" for k, n in r["isa_ran"].items()))
    for r in result["layers"] + result["networks"]:
        for isa, v in r["also_isa"].items():
            print(f"  {r['name']} b{r['batch']}: {isa} row {v['ms']:.2f} ms, {pair(v['ratio'], v['cpu_ratio'])} torch; "
                  f"{m['isa']} {pair(v['speedup_of_main_row'], v['cpu_speedup_of_main_row'])} faster")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
