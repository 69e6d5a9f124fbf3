"""Build bitnas/data/embedded/fashion_mnist_subset.npz from the full Fashion-MNIST.

Class-balanced and deterministic (seed 0): 800 train + 200 test images per class by default,
falling back to 600 + 150 per class if the compressed file would exceed 5 MB.

    python scripts/make_embedded_subset.py [--source DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bitnas.data import ImageDataset, load_dataset, take_subset  # noqa: E402
from bitnas.data.formats.embedded import EMBEDDED_FASHION_MNIST  # noqa: E402

MAX_BYTES = 5 * 1024 * 1024
SIZES = ((800, 200), (600, 150))


def subset_arrays(ds: ImageDataset, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×28×28 images and uint8 labels of a class-balanced subset."""
    sub = take_subset(ds, per_class * ds.num_classes, seed)
    counts = np.bincount(sub.labels.numpy(), minlength=ds.num_classes)
    assert (counts == per_class).all(), counts
    return sub.images[:, 0].numpy(), sub.labels.numpy().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=REPO.parent / "shared" / "datasets" / "fashion-mnist")
    ap.add_argument("--out", type=Path, default=EMBEDDED_FASHION_MNIST)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    train = load_dataset(f"fashion-mnist:{args.source}", "train")
    test = load_dataset(f"fashion-mnist:{args.source}", "test")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n_train, n_test in SIZES:
        tr_x, tr_y = subset_arrays(train, n_train, args.seed)
        te_x, te_y = subset_arrays(test, n_test, args.seed)
        np.savez_compressed(args.out, train_images=tr_x, train_labels=tr_y,
                            test_images=te_x, test_labels=te_y)
        size = args.out.stat().st_size
        print(f"{args.out}: {n_train}+{n_test} per class, {len(tr_y)}+{len(te_y)} images, "
              f"{size / 1e6:.2f} MB ({size} bytes)")
        if size <= MAX_BYTES:
            return 0
    print(f"{args.out}: still larger than {MAX_BYTES} bytes", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
