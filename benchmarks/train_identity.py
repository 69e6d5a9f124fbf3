"""Are two bitnas trees' trainings bitwise the same? Train a network N steps in each, compare.

Each tree trains in its own subprocess (so two checkouts can be imported side by side) as
`benchmarks/train_speed.py` steps it — forward in training mode, cross-entropy, backward,
gradient clipping at 5, Adam as the tree's trainer builds it — from one seed on fixed random
batches, then saves the loss of every step, the final weights and buffers (BN running stats)
and the logits of a held-out batch in eval mode. The parent compares them bit for bit and
prints the first difference in training (or "bitwise identical") and how the eval logits differ;
exit status 1 on any difference (on a training difference only, with --eval-may-differ).

    .venv/bin/python benchmarks/train_identity.py --ref /tmp/bitnas-old            # protocol network
    .venv/bin/python benchmarks/train_identity.py --ref /tmp/bitnas-old --structure darts --eval-may-differ
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/train_identity.py --ref /tmp/bitnas-old --steps 5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def train(src: str, out: str, a: argparse.Namespace) -> None:
    """Train in the tree under `src` and save {losses, state, logits} to `out`."""
    sys.path.insert(0, src)
    import torch
    from train_speed import training_step, tree_make_optimizer  # the benchmark's own step (same folder)

    from bitnas.nets import build_network
    from bitnas.space.genotypes import load_genotype

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    kw = dict(precision=a.precision, init_channels=a.channels, layers=a.layers, num_classes=10, in_channels=1,
              structure=a.structure)
    if a.activation:
        kw["activation"] = a.activation
    net = build_network(None, blocks=a.blocks, **kw) if a.blocks else build_network(load_genotype(a.genotype), **kw)
    try:
        from bitnas.binary import binarized_layers
        from bitnas.train.config import TrainConfig
        opt = tree_make_optimizer()(TrainConfig(optimizer="adam", lr=a.lr), net, binarized_layers(net))
    except ImportError:
        opt = torch.optim.Adam(net.parameters(), a.lr)
    gen = torch.Generator().manual_seed(a.seed + 1)
    losses = []
    net.train()
    for _ in range(a.steps):
        x = torch.randn(a.batch, 1, 28, 28, generator=gen)
        y = torch.randint(10, (a.batch,), generator=gen)
        losses.append(training_step(net, opt, x, y).detach())
    net.eval()
    with torch.no_grad():
        logits = net(torch.randn(a.batch, 1, 28, 28, generator=gen))[0]
    torch.save({"losses": torch.stack(losses), "state": net.state_dict(), "logits": logits}, out)


def first_difference(a: dict, b: dict) -> str | None:
    """Where two saved runs differ bitwise (None if nowhere)."""
    import torch

    def same(u: torch.Tensor, v: torch.Tensor) -> bool:
        return u.shape == v.shape and u.dtype == v.dtype and torch.equal(u.view(-1).view(torch.uint8) if u.is_floating_point() else u.view(-1),
                                                                          v.view(-1).view(torch.uint8) if v.is_floating_point() else v.view(-1))

    for i, (u, v) in enumerate(zip(a["losses"], b["losses"])):
        if not same(u.reshape(1), v.reshape(1)):
            return f"loss of step {i + 1}: {u.item()!r} vs {v.item()!r}"
    if a["state"].keys() != b["state"].keys():
        return "state dict keys differ"
    for k in a["state"]:
        u, v = a["state"][k].contiguous(), b["state"][k].contiguous()
        if not same(u, v):
            return f"{k}: max |difference| {(u.double() - v.double()).abs().max().item():.3e}"
    return None


def eval_difference(a: dict, b: dict) -> str | None:
    """How the two runs' eval-mode logits differ (None if bitwise equal): eval numerics may change
    on purpose (e.g. integer accumulation of ±1 products) while training stays bitwise."""
    import torch

    u, v = a["logits"].double(), b["logits"].double()
    if u.shape == v.shape and torch.equal(a["logits"].view(-1).view(torch.uint8), b["logits"].view(-1).view(torch.uint8)):
        return None
    rel = ((u - v).abs().amax(1) / v.abs().amax(1)).max().item() if u.shape == v.shape else float("inf")
    top1 = int((u.argmax(1) != v.argmax(1)).sum()) if u.shape == v.shape else -1
    return f"max relative difference {rel:.2e}, top-1 differs on {top1} of {len(v)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="the other bitnas source tree (its root, holding bitnas/)")
    p.add_argument("--genotype", default="DARTS_V2")
    p.add_argument("--blocks", default="", help="a hand-designed network (bireal, reactnet) instead of a genotype")
    p.add_argument("--structure", default="bireal")
    p.add_argument("--activation", default="approx_sign")
    p.add_argument("--precision", default="binary")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-may-differ", action="store_true",
                   help="exit 0 when only the eval-mode logits differ (a change of eval numerics)")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        train(a.worker[0], a.worker[1], a)
        return
    import torch

    args = [arg for arg in sys.argv[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, src in (("this", HERE.parent), ("ref", Path(a.ref).resolve())):
            out = str(Path(tmp) / f"{label}.pt")
            env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(a.threads))
            subprocess.run([sys.executable, __file__, *args, "--worker", str(src), out], check=True, env=env)
            runs[label] = torch.load(out)
    diff = first_difference(runs["this"], runs["ref"])
    evals = eval_difference(runs["this"], runs["ref"])
    what = a.blocks or f"{a.genotype} ({a.structure}, {a.activation or 'default activation'})"
    if diff is None:
        print(f"{what}, C={a.channels}, {a.layers} cells, batch {a.batch}, {a.steps} steps: training bitwise "
              f"identical (losses, weights, BN statistics); eval logits "
              + ("bitwise identical" if evals is None else f"differ: {evals}"))
        if evals is not None and not a.eval_may_differ:
            sys.exit(1)
        return
    print(f"{what}: differs — first at {diff}")
    sys.exit(1)


if __name__ == "__main__":
    main()
