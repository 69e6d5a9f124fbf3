"""Two builds of the engine extension side by side in one process, with torch fp32 as the yardstick.

Each build is a folder holding an `_engine*.so` (e.g. `bitnas/deploy` of this tree and of a
`git worktree` of the parent commit after `python setup.py build_ext --inplace`). Per benchmark
layer (those of `inference.py`, batch 64): packing the float NHWC input, the conv and the α/BN
float output on each build, and `F.conv2d` fp32 channels-last, all interleaved over the rounds
in a seeded random order per round, one thread; thread-CPU-time medians. Every build's floats
must be equal. (The fixed order this replaced, alternating forward and backward, ran the last
contender twice in a row every other round with its data still in cache, and the one after
torch on caches torch had just swept; on the loaded 2-core Sapphire Rapids guest such position
effects measured up to 1.3x between runs of the same code.)

`--parts` also times each build's conv alone on packed input, with no output ("core") and with
the float output ("conv"), to show where a change acts.

    .venv/bin/python benchmarks/engine_ab.py --build base=/tmp/base/bitnas/deploy --build new=bitnas/deploy
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import random
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F



def fail(message: str) -> None:
    """One `bitnas: error:` line and exit status 2."""
    print(f"bitnas: error: {message}", file=sys.stderr)
    sys.exit(2)


def benchmark_layers() -> list[tuple[str, int, int, int, int]]:
    """inference.py's LAYERS, read from its source: importing it would load this tree's engine
    under its own name, and the same library loaded twice cannot register its types again."""
    tree = ast.parse((Path(__file__).resolve().parent / "inference.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LAYERS" for t in node.targets):
            return [tuple(v) for v in ast.literal_eval(node.value)]
    fail("benchmarks/inference.py has no LAYERS")
    return []


def load_build(tag: str, folder: Path) -> ModuleType:
    """The extension in `folder`, imported under its own package name so two builds coexist."""
    so = sorted(folder.glob("_engine*.so"))
    if not so:
        fail(f"no _engine*.so in {folder}")
    spec = importlib.util.spec_from_file_location(f"{tag}._engine", so[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench(builds: dict[str, ModuleType], name: str, ci: int, co: int, hw: int, k: int, rounds: int, isa: str,
          parts: bool = False) -> str:
    """One layer: every contender timed in each round, in a random order seeded by the layer."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, ci, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(co, ci, k, k, generator=g).contiguous(memory_format=torch.channels_last)
    mul, add = torch.rand(co, generator=g).numpy(), torch.randn(co, generator=g).numpy()
    xn, neg = x.permute(0, 2, 3, 1).numpy(), (w < 0).numpy().astype(np.uint8)

    def runner(tag: str, mod: ModuleType):
        conv = mod.BinaryConv(neg, ci, 1, 1, 1, k // 2, k // 2, 1, 1, False)
        conv.set_transform(mul, add)

        def run() -> np.ndarray:
            bits = np.empty((64, hw, hw, (ci + 63) // 64), np.uint64)
            mod.pack(xn, bits, None, None, isa, 1)
            out = np.empty((64, hw, hw, co), np.float32)
            conv.run(bits, hw, hw, out, None, None, None, None, False, isa, 1)
            return out  # dropped by the timing loop: no build keeps a buffer alive between its calls

        packed = np.empty((64, hw, hw, (ci + 63) // 64), np.uint64)
        mod.pack(xn, packed, None, None, isa, 1)
        floats = np.empty((64, hw, hw, co), np.float32)
        core = lambda: conv.run(packed, hw, hw, None, None, None, None, None, False, isa, 1)  # noqa: E731
        conv_out = lambda: conv.run(packed, hw, hw, floats, None, None, None, None, False, isa, 1)  # noqa: E731
        return run, core, conv_out

    fns: dict = {"torch": lambda: F.conv2d(x, w, None, 1, k // 2)}
    for t, m in builds.items():
        run, core, conv_out = runner(t, m)
        fns[t] = run
        if parts:
            fns[f"{t}.core"], fns[f"{t}.conv"] = core, conv_out
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for f in fns.values():
        f()
    order = random.Random(name)
    for _ in range(rounds):
        for n in order.sample(names, len(names)):
            t0 = time.thread_time()
            fns[n]()
            times[n].append(time.thread_time() - t0)
    outs = [fns[t]() for t in builds]
    if not all(np.array_equal(outs[0], o) for o in outs):
        fail(f"the builds' floats differ on {name}")
    med = {n: statistics.median(v) for n, v in times.items()}
    macs = 64 * hw * hw * co * ci * k * k
    tags = list(builds)
    cells = [f"{t} {med[t] * 1e3:.3f} ms = {med['torch'] / med[t]:.2f}x torch ({macs / med[t] / 1e9:.0f} G/s)" for t in tags]
    cells += [f"{t}/{tags[0]} {med[tags[0]] / med[t]:.2f}x" for t in tags[1:]]
    line = f"{name}: torch {med['torch'] * 1e3:.2f} ms; " + "; ".join(cells)
    for part in ("core", "conv") if parts else ():
        line += f"\n    {part}: " + "; ".join(f"{t} {med[f'{t}.{part}'] * 1e3:.3f} ms" for t in tags)
        line += "".join(f"; {t}/{tags[0]} {med[f'{tags[0]}.{part}'] / med[f'{t}.{part}']:.2f}x" for t in tags[1:])
    return line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", action="append", required=True, metavar="TAG=FOLDER",
                   help="a folder with an _engine*.so; the first is the baseline")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--isa", default="avx512", help="the ISA row every build runs (default avx512)")
    p.add_argument("--parts", action="store_true", help="also each build's conv alone: no output, float output")
    a = p.parse_args()
    builds = {}
    for spec in a.build:
        tag, sep, folder = spec.partition("=")
        if not sep or not tag.isidentifier():
            fail(f"--build {spec!r}: expected TAG=FOLDER")
        builds[tag] = load_build(tag, Path(folder))
    torch.set_num_threads(1)
    print(f"{a.isa} row, batch 64, 1 thread, thread-CPU medians of {a.rounds} rounds in random order; "
          f"load {os.getloadavg()[0]:.1f}")
    with torch.inference_mode():
        for spec in benchmark_layers():
            print(bench(builds, *spec, rounds=a.rounds, isa=a.isa, parts=a.parts))
    print(f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
