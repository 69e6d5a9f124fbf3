"""Training throughput of fixed genotype networks (1-bit and fp32), optionally beside another checkout.

One iteration is one training step as `bitnas train` takes it: forward in training mode,
cross-entropy, `zero_grad`, backward, gradient-norm clipping at 5 and a step of Adam (lr 1e-3,
built as the tree's trainer builds it), on a random
batch of 1×28×28 images (Fashion-MNIST size), 10 classes. Images/second is the batch size
divided by the median step time over the timed iterations after warm-up.

Every source tree runs in its own worker process (so two checkouts of bitnas can be imported
side by side); the parent drives all contenders — every (tree, network, precision) — round robin,
one iteration at a time, so load from other jobs on the machine hits them equally. `--ref DIR`
adds a second tree (e.g. `git archive <commit> | tar -x -C DIR`): each row then shows both
figures and their ratio, and the largest logit difference of the two trees' networks (same seed,
same batch, before any step): float rounding for fp32 networks; for 1-bit ones rounding can flip
a sign (where the ±α terms of a binary conv cancel), which then shows in the logits.

`--search` adds search steps as contenders, built by each tree's own `search_speed.py`
(`build_ours`): `random` is the single-path weight step of random search and CP-NAS
(`SuperNetwork.forward(x, paths=...)` + `weight_step`), `pcdarts` / `ubnas` / `darts` an α step
plus a weight step of the mixed-op supernet; images/s counts every image through the supernet.

    .venv/bin/python benchmarks/train_speed.py                                  # default grid
    .venv/bin/python benchmarks/train_speed.py --ref /tmp/bitnas-old --json     # before/after
    .venv/bin/python benchmarks/train_speed.py --structures darts,cpnas,bireal,ebnas,kim,reactnet \\
        --sizes 8:3:32 --precision binary
    .venv/bin/python benchmarks/train_speed.py --ref /tmp/bitnas-old --sizes 8:3:32 --search random,pcdarts
    .venv/bin/python benchmarks/train_speed.py --ref /tmp/bitnas-old --sizes 8:5:64 --precision binary \
        --activation approx_sign                                                # the study protocol network
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------- worker


def training_step(net: Any, opt: Any, x: Any, y: Any) -> Any:
    """One step as `bitnas train` takes it: forward, cross-entropy, backward, clip at 5, optimizer
    step; returns the loss."""
    import torch
    import torch.nn.functional as F

    logits, _ = net(x)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    return loss


def tree_make_optimizer() -> Any:
    """The imported tree's `make_optimizer` (moved from bitnas.train.trainer to bitnas.train.build)."""
    try:
        from bitnas.train.build import make_optimizer
    except ImportError:
        from bitnas.train.trainer import make_optimizer
    return make_optimizer


def worker(src: str, threads: int) -> None:
    """Serve build/step requests (one JSON object per line) for the bitnas found under `src`."""
    sys.path.insert(0, src)
    import torch

    import bitnas
    from bitnas.nets import build_network
    from bitnas.space.genotypes import load_genotype

    torch.set_num_threads(threads)
    nets: dict[str, Any] = {}
    searches: dict[str, Any] = {}

    def make_optimizer(net: torch.nn.Module) -> torch.optim.Optimizer:
        """Adam (lr 1e-3) as this tree's `bitnas train` builds it (`bitnas.train.build`, earlier
        `bitnas.train.trainer`; trees older than either built a default `torch.optim.Adam`)."""
        try:
            from bitnas.binary import binarized_layers
            from bitnas.train.config import TrainConfig
            tree_optimizer = tree_make_optimizer()
        except ImportError:
            return torch.optim.Adam(net.parameters(), 1e-3)
        return tree_optimizer(TrainConfig(optimizer="adam", lr=1e-3), net, binarized_layers(net))

    def build_search(spec: dict[str, Any]) -> dict[str, Any]:
        sys.path.insert(0, str(Path(src) / "benchmarks"))
        from search_speed import CONFIGS, build_ours

        torch.manual_seed(0)
        searches[spec["key"]] = build_ours(spec["strategy"], CONFIGS[spec["config"]], torch.device("cpu"),
                                           spec["precision"], "auto")
        return {"file": bitnas.__file__, "logits": None}

    def build(spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("strategy"):
            return build_search(spec)
        torch.manual_seed(0)
        size = dict(precision=spec["precision"], init_channels=spec["channels"], layers=spec["layers"],
                    num_classes=10, in_channels=1)
        if spec.get("blocks"):
            net = build_network(None, blocks=spec["blocks"], **size)
        else:
            net = build_network(load_genotype(spec["genotype"]), structure=spec["structure"], **size,
                                **({"activation": spec["activation"]} if spec.get("activation") else {}))
        net.train()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(spec["batch"], 1, 28, 28, generator=gen)
        y = torch.randint(10, (spec["batch"],), generator=gen)
        with torch.no_grad():
            logits = net(x)[0]
        nets[spec["key"]] = (net, make_optimizer(net), x, y)
        return {"file": bitnas.__file__, "logits": logits.flatten().tolist()}

    def step(key: str) -> dict[str, Any]:
        if key in searches:
            t0 = time.perf_counter()
            n = searches[key].step()
            return {"seconds": time.perf_counter() - t0, "images": n}
        net, opt, x, y = nets[key]
        t0 = time.perf_counter()
        training_step(net, opt, x, y)
        return {"seconds": time.perf_counter() - t0, "images": int(x.shape[0])}

    for line in sys.stdin:
        req = json.loads(line)
        out = build(req["spec"]) if req["op"] == "build" else step(req["key"])
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Worker:
    """A worker subprocess for one source tree."""

    def __init__(self, label: str, src: Path, threads: int) -> None:
        self.label = label
        env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(src), "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.label} died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


# ----------------------------------------------------------------------------------- driver


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """'8:3:32,16:5:64' → [(C, cells, batch), ...]."""
    out = []
    for item in text.split(","):
        c, layers, batch = (int(v) for v in item.split(":"))
        out.append((c, layers, batch))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--genotype", default="DARTS_V2")
    p.add_argument("--structures", default="bireal", help="comma-separated module structures")
    p.add_argument("--activation", default="", help="activation quantizer of the genotype networks (e.g. "
                   "approx_sign, the study protocol's; default: the network default, ste_sign)")
    p.add_argument("--sizes", default="8:3:32,16:5:64,36:8:64",
                   help="comma-separated C:cells:batch (init channels, number of cells, batch size)")
    p.add_argument("--precision", default="binary,fp32", help="comma-separated: binary, fp32")
    p.add_argument("--blocks", default="", help="comma-separated hand-designed networks (bireal, reactnet) to "
                   "time too, at the same sizes")
    p.add_argument("--search", default="", help="comma-separated search strategies to time too "
                   "(random, pcdarts, ubnas, darts), in both precisions of --precision")
    p.add_argument("--search-config", default="small", help="search_speed.py configuration of the supernet "
                   "(small: C=8, 5 cells, batch 32, 3x16x16; cifar: C=16, 8 cells, batch 64, 3x32x32)")
    p.add_argument("--ref", help="a second bitnas source tree (its root, holding bitnas/) to time beside this one")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per contender")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.threads)
        return

    trees = [("this", HERE.parent)] + ([("ref", Path(a.ref).resolve())] if a.ref else [])
    workers = {label: Worker(label, src, a.threads) for label, src in trees}
    specs = []
    for structure, (c, layers, batch), precision in itertools.product(
            a.structures.split(","), parse_sizes(a.sizes), a.precision.split(",")):
        key = f"{structure} C={c} cells={layers} batch={batch} {precision}"
        specs.append(dict(key=key, genotype=a.genotype, structure=structure, channels=c, layers=layers,
                          batch=batch, precision=precision, activation=a.activation))
    for blocks, (c, layers, batch), precision in itertools.product(
            [b for b in a.blocks.split(",") if b], parse_sizes(a.sizes), a.precision.split(",")):
        key = f"blocks {blocks} C={c} cells={layers} batch={batch} {precision}"
        specs.append(dict(key=key, blocks=blocks, channels=c, layers=layers, batch=batch, precision=precision))
    for strategy, precision in itertools.product([s for s in a.search.split(",") if s], a.precision.split(",")):
        specs.append(dict(key=f"search {strategy} ({a.search_config}) {precision}", strategy=strategy,
                          config=a.search_config, precision=precision))
    logits: dict[tuple[str, str], list[float]] = {}
    files = {}
    for spec in specs:
        for label, w in workers.items():
            r = w.ask({"op": "build", "spec": spec})
            logits[label, spec["key"]] = r["logits"]
            files[label] = r["file"]
    times: dict[tuple[str, str], list[float]] = {k: [] for k in logits}
    images: dict[str, int] = {}
    for it in range(a.warmup + a.iters):
        for spec in specs:
            for label, w in workers.items():
                r = w.ask({"op": "step", "key": spec["key"]})
                if it >= a.warmup:
                    times[label, spec["key"]].append(r["seconds"])
                    images[spec["key"]] = r["images"]
    for w in workers.values():
        w.close()

    rows = []
    for spec in specs:
        k = spec["key"]
        row: dict[str, Any] = dict(spec)
        for label in workers:
            row[f"{label}_images_per_s"] = images[k] / statistics.median(times[label, k])
        if "ref" in workers:
            row["ratio"] = row["this_images_per_s"] / row["ref_images_per_s"]
            if logits["this", k] is not None:
                row["max_abs_logit_diff"] = max(abs(u - v) for u, v in zip(logits["this", k], logits["ref", k]))
        rows.append(row)
    meta = {"genotype": a.genotype, "threads": a.threads, "iters": a.iters, "warmup": a.warmup,
            "trees": {label: str(src) for label, src in trees}, "bitnas_files": files}
    if a.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))
        return
    print(f"{a.genotype}, {a.threads} thread(s), median of {a.iters} steps after {a.warmup} warm-up, "
          f"contenders interleaved step by step")
    for label, src in trees:
        print(f"  {label}: {src} (imports {files[label]})")
    head = f"{'network':48s} {'this img/s':>10s}"
    if "ref" in workers:
        head += f" {'ref img/s':>10s} {'ratio':>6s} {'max|Δlogit|':>12s}"
    print(head)
    for row in rows:
        line = f"{row['key']:48s} {row['this_images_per_s']:10.1f}"
        if "ref" in workers:
            diff = row.get("max_abs_logit_diff")
            line += f" {row['ref_images_per_s']:10.1f} {row['ratio']:6.2f} " + (f"{diff:12.2e}" if diff is not None else "")
        print(line)


if __name__ == "__main__":
    main()
