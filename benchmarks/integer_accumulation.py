"""What the integer accumulation of binary convs costs: conv(sign x, sign W)·α (eval mode, the
default) against conv(sign x, α·sign W) (the scaled kernel training uses), in eval forward and —
to weigh applying it in training too — in a training step, interleaved in one process, medians.

The scaled-kernel form is had by making `BinaryConv2d.integer_kernel` answer None; the "training
too" form by letting it answer as in eval whatever the mode. Both are stand-ins of this script
only.

    .venv/bin/python benchmarks/integer_accumulation.py [--structure darts] [--batches 1 64]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import interleaved  # noqa: E402

from bitnas.binary import BinaryConv2d, binarized_layers  # noqa: E402
from bitnas.nets import build_network  # noqa: E402
from bitnas.space.genotypes import load_genotype  # noqa: E402
from bitnas.train.build import make_optimizer  # noqa: E402
from bitnas.train.config import TrainConfig  # noqa: E402

INTEGER = BinaryConv2d.integer_kernel


def _everywhere(self: BinaryConv2d):
    """integer_kernel as in eval mode, whatever the mode (the "training too" alternative)."""
    was = self.training
    self.training = False
    try:
        return INTEGER(self)
    finally:
        self.training = was


def form(name: str) -> None:
    BinaryConv2d.integer_kernel = {"integer": INTEGER, "kernel": lambda self: None, "everywhere": _everywhere}[name]


def timed(fn: Callable[[], object], name: str) -> Callable[[], object]:
    def run() -> object:
        form(name)
        return fn()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--genotype", default="DARTS_V2")
    p.add_argument("--structure", default="cpnas")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build_network(load_genotype(a.genotype), precision="binary", structure=a.structure,
                        init_channels=a.channels, layers=a.layers, num_classes=10, in_channels=1)
    opt = make_optimizer(TrainConfig(optimizer="adam", lr=1e-3), net, binarized_layers(net))
    print(f"{a.genotype} ({a.structure}), C={a.channels}, {a.layers} cells, one thread; "
          "median ms of wall time (CPU time), interleaved")
    for b in a.batches:
        x = torch.randn(b, 1, 28, 28)
        y = torch.randint(10, (b,))

        def infer() -> object:
            net.eval()
            with torch.no_grad():
                return net(x)

        def step() -> object:
            net.train()
            loss = F.cross_entropy(net(x)[0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        for what, fn, names in (("eval forward", infer, ("kernel", "integer")),
                                ("training step", step, ("kernel", "everywhere"))):
            times = interleaved({n: timed(fn, n) for n in names}, a.rounds)
            wall = {n: statistics.median(t[0] for t in ts) for n, ts in times.items()}
            cpu = {n: statistics.median(t[1] for t in ts) for n, ts in times.items()}
            ref, new = names
            print(f"batch {b:3d} {what:<13}: {ref} {1e3 * wall[ref]:.2f} ({1e3 * cpu[ref]:.2f})  "
                  f"{new} {1e3 * wall[new]:.2f} ({1e3 * cpu[new]:.2f})  ratio {new}/{ref} "
                  f"{wall[new] / wall[ref]:.3f} (CPU {cpu[new] / cpu[ref]:.3f})", flush=True)
    form("integer")


if __name__ == "__main__":
    main()
