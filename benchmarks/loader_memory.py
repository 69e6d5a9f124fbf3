"""Peak memory of a 1-epoch streamed `bitnas train` over 2,000 and over 20,000 image files.

The acceptance check of streaming: memory is bounded by the batch and the workers, not the
dataset, so the run over 10× more files may use at most `--budget-mb` (200) MB more. Each run
is a fresh process; its peak RSS (ru_maxrss) and that of its largest worker are reported.
`--in-memory` adds the same runs with stream=off (the whole decoded split in memory) for contrast.
Exit status 1 when the streamed difference exceeds the budget.

    .venv/bin/python benchmarks/loader_memory.py                      # 2,000 vs 20,000 files, 2 workers
    .venv/bin/python benchmarks/loader_memory.py --counts 2000,20000 --in-memory
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUN = """
import json, resource, sys
from bitnas.cli import main
code = main(sys.argv[1:])
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "main_mb": me.ru_maxrss / 1024, "worker_mb": kids.ru_maxrss / 1024}))
"""


def write_folder(root: Path, n: int, side: int, classes: int = 10, val: int = 100, seed: int = 0) -> None:
    """`n` training JPEGs (side..1.5·side pixels) in root/train/<class>/ and `val` in root/val/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", val)):
        for i in range(count):
            d = root / split / f"c{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            h, w = (int(v) for v in rng.integers(side, side * 3 // 2, 2))
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=85)


def run(folder: Path, out: Path, side: int, batch_size: int, workers: int, stream: str) -> dict:
    argv = ["train", "--data", f"imagefolder:{folder}", "--out", str(out), "--epochs", "1", "--init-channels", "4",
            "--layers", "2", "--batch-size", str(batch_size), f"image_size={side}", f"stream={stream}",
            f"num_workers={workers}", "val_fraction=0", "progress=off", "threads=1", "random_resized_crop=0.25"
            if stream == "on" else "hflip=true"]
    p = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="2000,20000", help="training files of the small and the large run")
    p.add_argument("--side", type=int, default=64, help="image side (files are side..1.5·side pixels)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--budget-mb", type=float, default=200.0)
    p.add_argument("--in-memory", action="store_true", help="also run with stream=off for contrast")
    args = p.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    modes = ["on", "off"] if args.in_memory else ["on"]
    results: dict[str, dict[int, dict]] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory(prefix="bitnas-rss-") as tmp:
        for n in counts:
            folder = Path(tmp) / f"images{n}"
            write_folder(folder, n, args.side)
            for m in modes:
                results[m][n] = run(folder, Path(tmp) / f"run-{m}-{n}", args.side, args.batch_size, args.workers, m)
    print(f"peak RSS, 1 epoch, {args.side} px, batch {args.batch_size}, {args.workers} workers when streaming")
    print(f"{'stream':<8} {'files':>7} {'main MB':>9} {'worker MB':>10}")
    for m in modes:
        for n in counts:
            r = results[m][n]
            print(f"{m:<8} {n:>7} {r['main_mb']:9.0f} {r['worker_mb'] if m == 'on' else 0:10.0f}")
    lo, hi = results["on"][counts[0]], results["on"][counts[-1]]
    diff = hi["main_mb"] - lo["main_mb"]
    ok = diff <= args.budget_mb
    print(f"streamed: {counts[-1]} files use {diff:+.0f} MB over {counts[0]} (budget {args.budget_mb:.0f} MB): "
          f"{'within' if ok else 'OVER'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
