"""Search cost: CP-NAS vs PC-DARTS on the same Fashion-MNIST split and the same supernet size.

Both searches run as `python -m bitnas search` subprocesses with the same data, split, seed,
init channels, cells, batch size, precision (1-bit supernets) and thread count, one after the
other; CP-NAS trains its child and parent one after the other (one core, as PC-DARTS) unless
--cp-concurrent. The budget is matched in weight-training images per supernet:

    PC-DARTS: E epochs × N_train images  (plus its α steps on validation batches after warm-up and
              an evaluation of the validation split after every epoch);
    CP-NAS:   S samples × s steps × B images, S = T·(2 + 3 + … + |ops|) = 35·T for 8 ops, in the
              child and in the parent alike (plus 2 × val_subset evaluation images per sample),
    with s = round(E · N_train / (S · B)) unless --sample-steps is given.

The default (E = 10 PC-DARTS epochs, T = 1 round, 10 000 Fashion-MNIST images split 50/50,
C = 8, 5 cells, batch 64) gives both supernets ≈ 50 000 training images. Reported: the
runner's search seconds (sum of unit times, as every strategy prints), the process wall time,
images processed, and the ratio CP-NAS / PC-DARTS (the CP-NAS paper claims ≈ 0.7 or less).

    python benchmarks/cpnas_vs_pcdarts.py                       # the documented comparison
    python benchmarks/cpnas_vs_pcdarts.py --train-subset 400 --init-channels 4 --layers 3 \\
        --pcdarts-epochs 11 --val-subset 100                    # tiny (≈4 min): 2200 vs 2240 images,
                                                                # measured 53 s vs 176 s = 0.30×
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


def registered_strategies() -> list[str]:
    from bitnas.search import strategies  # noqa: F401 - registers every strategy
    from bitnas.search.strategy import STRATEGIES

    return STRATEGIES.names()


def split_sizes(data: str, subset: int, seed: int) -> tuple[int, int]:
    """(train, val) images of the split every search of this benchmark uses (val_fraction 0.5)."""
    from bitnas.data import load_dataset, take_subset, train_val_split

    full = load_dataset(data, "train")
    ds = take_subset(full, subset, seed) if subset else full
    train_idx, val_idx = train_val_split(ds.labels, 0.5, seed)
    return len(train_idx), len(val_idx)


def num_ops(space: str) -> int:
    from bitnas.space.spaces import get_space

    return len(get_space(space).ops)


def run(name: str, args: list[str], out: Path, threads: int) -> dict[str, Any]:
    """One search subprocess; its genotype.json plus the process wall time."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    flags = [x for x in args if "=" not in x or x.startswith("-")]
    overrides = [x for x in args if "=" in x and not x.startswith("-")]
    cmd = [sys.executable, "-m", "bitnas", "search", *flags, "--out", str(out), "--force", *overrides, "progress=off"]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{name} search failed (exit {proc.returncode})")
    result = json.loads((out / "genotype.json").read_text())
    result["process_seconds"] = wall
    print(f"{name}: {result['search_seconds']:.1f} s search, {wall:.1f} s process, "
          f"{result['images_processed']} images; genotype {result['genotype_text']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=10000, help="images taken, then split 50/50 train/val")
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pcdarts-epochs", type=int, default=10, help="E (warm-up: PC-DARTS default, 30%% of E)")
    p.add_argument("--rounds", type=int, default=1, help="CP-NAS T")
    p.add_argument("--sample-steps", type=int, default=0, help="CP-NAS steps per sample (0 = match PC-DARTS' images)")
    p.add_argument("--val-subset", type=int, default=1000, help="CP-NAS validation images per measurement")
    p.add_argument("--threads", type=int, default=0, help="OMP/MKL threads of each search (0 = leave the environment)")
    p.add_argument("--cp-concurrent", action=argparse.BooleanOptionalAction, default=False,
                   help="let CP-NAS train child and parent on two threads (default off: one core per search, "
                        "as PC-DARTS)")
    p.add_argument("--only", choices=("both", "cpnas", "pcdarts"), default="both")
    p.add_argument("--out-dir", default="runs/bench_cpnas_vs_pcdarts")
    a = p.parse_args(argv)

    out = REPO / a.out_dir if not Path(a.out_dir).is_absolute() else Path(a.out_dir)
    n_train, n_val = split_sizes(a.data, a.train_subset, a.seed)
    samples = a.rounds * sum(range(2, num_ops("cpnas") + 1))
    pc_images = a.pcdarts_epochs * n_train
    steps = a.sample_steps or max(1, round(pc_images / (samples * a.batch_size)))
    common = ["--data", a.data, "--train-subset", str(a.train_subset), "--init-channels", str(a.init_channels),
              "--layers", str(a.layers), "--batch-size", str(a.batch_size), "--seed", str(a.seed),
              "--precision", "binary", "val_fraction=0.5"]
    print("CP-NAS vs PC-DARTS search cost — same data split, supernet size, batch, precision and threads")
    print(f"  data {a.data}, {a.train_subset} images → {n_train} train / {n_val} val, "
          f"C={a.init_channels}, {a.layers} cells, batch {a.batch_size}, seed {a.seed}, threads "
          f"{a.threads or os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"  PC-DARTS: {a.pcdarts_epochs} epochs (K=4, edge normalisation, 30% warm-up) → "
          f"{pc_images} weight-training images on one supernet")
    print(f"  CP-NAS:   T={a.rounds} → {samples} samples × {steps} steps × {a.batch_size} = "
          f"{samples * steps * a.batch_size} training images on each of child and parent, "
          f"val_subset {a.val_subset}, child and parent {'concurrent' if a.cp_concurrent else 'one after the other'}")

    cp_images = samples * steps * a.batch_size
    if abs(cp_images - pc_images) > 0.25 * pc_images:
        print(f"  WARNING: the budgets differ by {100 * (cp_images / pc_images - 1):+.0f}% (CP-NAS needs at least "
              f"{samples} samples × 1 step); raise --pcdarts-epochs or --train-subset for a fair comparison")
    have = registered_strategies()
    results: dict[str, Any] = {}
    if a.only in ("both", "cpnas"):
        results["cpnas"] = run("cpnas", ["--strategy", "cpnas", *common, "--rounds", str(a.rounds), "--sample-steps",
                                         str(steps), f"val_subset={a.val_subset}", f"cp_concurrent={a.cp_concurrent}"],
                               out / "cpnas", a.threads)
    if a.only in ("both", "pcdarts"):
        if "pcdarts" not in have:
            print("pcdarts is not registered in this checkout; skipping its half")
        else:
            results["pcdarts"] = run("pcdarts", ["--strategy", "pcdarts", *common, "--epochs", str(a.pcdarts_epochs)],
                                     out / "pcdarts", a.threads)

    print("\nstrategy   search s   process s   images")
    for name, r in results.items():
        print(f"{name:<9} {r['search_seconds']:>9.1f} {r['process_seconds']:>11.1f} {r['images_processed']:>9}")
    summary: dict[str, Any] = {"settings": vars(a), "cpnas_sample_steps": steps, "cpnas_samples": samples,
                               "pcdarts_weight_images": pc_images, "cpnas_weight_images_per_net": cp_images,
                               "results": results}
    if "cpnas" in results and "pcdarts" in results:
        ratio = results["cpnas"]["search_seconds"] / results["pcdarts"]["search_seconds"]
        summary["ratio"] = ratio
        verdict = "met" if ratio <= 0.7 else "NOT met"
        print(f"\nCP-NAS / PC-DARTS search time: {ratio:.2f}× (target ≤ 0.70×: {verdict})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
