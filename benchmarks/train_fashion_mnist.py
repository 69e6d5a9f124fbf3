"""Benchmark: the binarised DARTS_V2 child and its fp32 parent on full Fashion-MNIST (CPU recipe).

Trains with the `train_fashion_mnist_cpu` recipe (or --recipe), prints the test top-1 of the
1-bit child and of the full-precision parent and the wall time of each, and checks the target
(child ≥ 92 % top-1 within 60 minutes of training on a 2-core machine).

    .venv/bin/python benchmarks/train_fashion_mnist.py                      # the full run
    .venv/bin/python benchmarks/train_fashion_mnist.py --epochs 1 --train-subset 500 --test-subset 500

When the recipe's method uses the parent (cp / kd / init_from_parent) the parent is trained
inside the child's run (<out>/child/parent/) and its time counts towards the child's wall
time; otherwise it is trained afterwards in <out>/parent/ (skip with --no-parent).
--nproc N runs each training under `torchrun --standalone --nproc_per_node=N` (one CPU thread
per process), else one process with --threads threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def train_command(args: argparse.Namespace, out: Path, extra_flags: list[str], extra_kv: list[str]) -> list[str]:
    """The `bitnas train` command line (python -m bitnas, or torchrun when --nproc > 1)."""
    if args.nproc > 1:
        launcher = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={args.nproc}",
                    "-m", "bitnas"]
    else:
        launcher = [sys.executable, "-m", "bitnas"]
    flags = ["train", "--config", args.recipe, "--genotype", "DARTS_V2", "--data", args.data, "--out", str(out),
             "--force"]  # the benchmark owns its output folder
    for name in ("epochs", "train_subset", "init_channels", "layers", "batch_size", "seed"):
        v = getattr(args, name)
        if v is not None:
            flags += [f"--{name.replace('_', '-')}", str(v)]
    kv = [f"threads={args.threads if args.nproc == 1 else 1}"]
    if args.test_subset is not None:
        kv.append(f"test_subset={args.test_subset}")
    if args.parent_epochs is not None:
        kv.append(f"parent_epochs={args.parent_epochs}")
    return launcher + flags + extra_flags + kv + extra_kv + list(args.overrides)


def run_training(cmd: list[str], nproc: int) -> float:
    """Run one training command; its wall time in seconds (raises on failure)."""
    env = dict(os.environ)
    # Idle OpenMP threads sleep instead of spinning: with busy-wait, 2 threads were 4-5x slower
    # than 1 while other jobs shared the 2 cores (same results either way).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if nproc > 1:
        env["OMP_NUM_THREADS"] = "1"
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=env)
    if p.returncode != 0:
        raise SystemExit(f"benchmark: training failed (exit {p.returncode})")
    return time.time() - t0


def read_result(out: Path) -> dict[str, Any]:
    return json.loads((out / "result.json").read_text())


def seconds_in(run: Path) -> float:
    """Sum of the per-epoch wall times recorded in run/metrics.jsonl."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0.0
    return sum(json.loads(line).get("seconds", 0.0) for line in path.read_text().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="train_fashion_mnist_cpu", help="recipe name or YAML file")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", default=None, help="run directory (default runs/bench-train-fmnist-<time>)")
    p.add_argument("--epochs", type=int, default=None, help="child epochs (default: the recipe's)")
    p.add_argument("--parent-epochs", type=int, default=None, help="parent epochs (default: the recipe's)")
    p.add_argument("--train-subset", type=int, default=None, help="train on N images only (quick check)")
    p.add_argument("--test-subset", type=int, default=None, help="test on N images only (quick check)")
    p.add_argument("--init-channels", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--nproc", type=int, default=2, help="processes (torchrun, gloo, one thread each); 1 = plain process")
    p.add_argument("--threads", type=int, default=1, help="torch threads when --nproc 1")
    p.add_argument("--budget-minutes", type=float, default=60.0, help="time target for the child")
    p.add_argument("--target-top1", type=float, default=92.0, help="accuracy target for the child (%%)")
    p.add_argument("--no-parent", action="store_true", help="do not train a separate parent")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra TrainConfig overrides")
    args = p.parse_args(argv)

    out = Path(args.out or f"runs/bench-train-fmnist-{time.strftime('%Y%m%d-%H%M%S')}")
    child_dir, parent_dir = out / "child", out / "parent"
    child_wall = run_training(train_command(args, child_dir, [], []), args.nproc)
    child = read_result(child_dir)
    parent_inside = child.get("parent") is not None
    parent_top1, parent_wall = child.get("parent_test_top1"), seconds_in(child_dir / "parent")
    if not parent_inside and not args.no_parent:
        parent_wall = run_training(train_command(args, parent_dir, ["--precision", "fp32"],
                                                 ["method=plain", "kd_weight=0", "two_stage=false",
                                                  "init_from_parent=false"]), args.nproc)
        parent_top1 = read_result(parent_dir)["test_top1"]

    summary = {
        "recipe": args.recipe, "nproc": args.nproc, "threads": args.threads if args.nproc == 1 else 1,
        "child_test_top1": child["test_top1"], "child_wall_minutes": round(child_wall / 60, 2),
        "child_epochs": child["metrics"].get("epoch"), "parent_test_top1": parent_top1,
        "parent_wall_minutes": round(parent_wall / 60, 2), "parent_inside_child_run": parent_inside,
        "target_met": bool(child["test_top1"] >= args.target_top1 and child_wall / 60 <= args.budget_minutes),
        "out": str(out),
    }
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    note = " (includes training the parent)" if parent_inside else ""
    print(f"child  (1-bit DARTS_V2): test top-1 {child['test_top1']:.2f} %  wall {child_wall / 60:.1f} min{note}")
    if parent_top1 is not None:
        print(f"parent (fp32 DARTS_V2) : test top-1 {parent_top1:.2f} %  wall {parent_wall / 60:.1f} min")
    verdict = "met" if summary["target_met"] else "NOT met"
    print(f"target (child ≥ {args.target_top1:.1f} % within {args.budget_minutes:.0f} min): {verdict}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
