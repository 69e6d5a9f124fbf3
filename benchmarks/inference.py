"""Inference of an exported 1-bit network against the same network straight from training.

Builds the binary DARTS_V2 network (CIFAR style; default C=8, 3 cells, 1×28×28 Fashion-MNIST
inputs), exports it with `bitnas.deploy` (kernels bit-packed, frozen on load) and times eval-mode
forward passes of both, interleaved, on random batches: the trained module re-binarises every
kernel (sign and α = mean|W|) in each forward, the exported one uses its frozen kernels. Prints
the median images/second of each, their ratio, whether the logits are bitwise equal, and the
bytes of the export against a training checkpoint and the fp32 network.

    .venv/bin/python benchmarks/inference.py
    .venv/bin/python benchmarks/inference.py --init-channels 36 --layers 20 --in-channels 3 --size 32
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bitnas.deploy import export_checkpoint, load_export  # noqa: E402
from bitnas.nets import arch_spec, build_network  # noqa: E402
from bitnas.space.genotypes import load_genotype  # noqa: E402
from bitnas.utils import save_checkpoint  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--genotype", default="DARTS_V2")
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--structure", default="bireal")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    kw = dict(style="cifar", precision="binary", structure=a.structure, init_channels=a.init_channels,
              layers=a.layers, num_classes=10, in_channels=a.in_channels, auxiliary=True)
    g = load_genotype(a.genotype)
    trained = build_network(g, **kw).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ck, out = Path(tmp) / "last.pt", Path(tmp) / "model.bitnas"
        save_checkpoint(ck, {"arch": arch_spec(g, **kw), "model": trained.state_dict()})
        sizes = export_checkpoint(ck, out)
        exported = load_export(out)
        ck_bytes = ck.stat().st_size
    x = torch.randn(a.batch, a.in_channels, a.size, a.size)
    times: dict[str, list[float]] = {"trained (re-binarises each forward)": [], "exported (frozen kernels)": []}
    models = dict(zip(times, (trained, exported)))
    with torch.inference_mode():
        same = torch.equal(trained(x)[0], exported(x)[0])
        for _ in range(a.iters):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, {a.threads} thread(s); {a.genotype} binary ({a.structure}), C={a.init_channels}, "
          f"{a.layers} cells, batch {a.batch} of {a.in_channels}x{a.size}x{a.size}, median of {a.iters}")
    rates = {n: a.batch / statistics.median(ts) for n, ts in times.items()}
    for n, r in rates.items():
        print(f"  {n:<38} {r:9.1f} img/s")
    r_t, r_e = rates.values()
    print(f"  ratio exported / trained: {r_e / r_t:.2f}x; logits bitwise equal: {same}")
    print(f"  bytes: export file {sizes['file_bytes']:,} (payload {sizes['packed_bytes'] + sizes['fp32_bytes']:,}), "
          f"training checkpoint {ck_bytes:,}, fp32 network {sizes['fp32_model_bytes']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
