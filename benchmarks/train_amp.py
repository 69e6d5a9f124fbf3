"""Training-step time of one network under each `amp` and `channels_last` setting, side by side.

One step as `bitnas train` takes it: forward and cross-entropy under `bitnas.common.amp.autocast`,
backward (through `torch.amp.GradScaler` for fp16), gradient-norm clipping at 5, Adam. Every
contender (amp × channels_last) is its own copy of one network (same seed) in this process, and
the contenders are stepped round robin, one step at a time, so load from other jobs hits them
alike; the table prints the median step time and its ratio to amp=none with channels-last on
(the CPU default). Figures from a shared machine are inflated: quote the ratios.

    .venv/bin/python benchmarks/train_amp.py                          # C=8, 3 cells, batch 64, 28 px
    .venv/bin/python benchmarks/train_amp.py --channels 16 --layers 5 --batch 64 --iters 20
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from bitnas.binary import binarized_layers
from bitnas.common.amp import autocast, grad_scaler
from bitnas.config import positive_int
from bitnas.nets import build_network
from bitnas.space.genotypes import load_genotype
from bitnas.train.build import make_optimizer
from bitnas.train.config import TrainConfig


def step(net: Any, opt: torch.optim.Optimizer, scaler: Any, amp: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step (forward and loss under autocast, scaled backward for fp16, clip, Adam)."""
    with autocast(amp, x.device):
        logits, _ = net(x)
        loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genotype", default="DARTS_V2")
    p.add_argument("--precision", default="binary", choices=("binary", "fp32"))
    p.add_argument("--channels", type=positive_int, default=8)
    p.add_argument("--layers", type=positive_int, default=3)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--size", type=positive_int, default=28, help="image side (1 channel)")
    p.add_argument("--amp", default="none,bf16,fp16", help="comma-separated amp settings")
    p.add_argument("--iters", type=positive_int, default=10, help="timed steps per contender")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed steps per contender first")
    p.add_argument("--threads", type=positive_int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = build_network(load_genotype(a.genotype), precision=a.precision, init_channels=a.channels, layers=a.layers,
                         num_classes=10, in_channels=1, structure="bireal")
    cfg = TrainConfig(lr=1e-3)
    contenders: dict[tuple[str, bool], tuple[Any, Any, Any]] = {}
    for amp in a.amp.split(","):
        for cl in (True, False):
            net = copy.deepcopy(base)
            net.channels_last = cl
            contenders[(amp, cl)] = (net, make_optimizer(cfg, net, binarized_layers(net)), grad_scaler(amp, torch.device("cpu")))
    x, y = torch.randn(a.batch, 1, a.size, a.size), torch.randint(0, 10, (a.batch,))
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in contenders}
    for i in range(a.warmup + a.iters):
        for key, (net, opt, scaler) in contenders.items():
            t0 = time.perf_counter()
            step(net, opt, scaler, key[0], x, y)
            if i >= a.warmup:
                times[key].append(time.perf_counter() - t0)
    ref = statistics.median(times[(a.amp.split(",")[0], True)])
    print(f"{a.genotype} {a.precision} C={a.channels} {a.layers} cells, batch {a.batch}, {a.size} px, "
          f"{a.threads} thread(s), {a.iters} steps each (median)")
    print(f"{'amp':<6} {'channels_last':<14} {'ms/step':>9} {'vs first':>9}")
    for (amp, cl), ts in times.items():
        m = statistics.median(ts)
        print(f"{amp:<6} {'on' if cl else 'off':<14} {1000 * m:>9.1f} {m / ref:>8.2f}x")


if __name__ == "__main__":
    main()
