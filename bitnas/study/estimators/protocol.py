"""Zero-cost scores of genotypes under a training protocol: the network a `bitnas train` of the
genotype would start from, scored on a few batches of its training images.

The network is `build_network` with the protocol's settings, initialised after
`torch.manual_seed(seed)` exactly as the training with that seed initialises it. The batches
(`batch_size` images each) are the first batches of a seeded shuffle of the protocol's training
split: `train_subset` if set, minus the validation split — no validation or test image is read.

`python -m bitnas.study.estimators.protocol TRIAL.yaml GENOTYPES.json --estimators a,b --out
SCORES.json` is a study's zero-cost trial (TRIAL.yaml: the `bitnas train` config of the
ground-truth genotypes at the trial's seed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch import nn

from bitnas.data import BatchLoader, ImageDataset
from bitnas.data.loader import mix_seed
from bitnas.errors import DataError
from bitnas.space.genotypes import Genotype
from bitnas.study.estimators.zero_cost import Batch, batches_needed, check_names, score_network

BATCH_STREAM = 0x2C0  # the seed stream of the scoring batches (apart from training's own shuffles)


def training_batches(ds: ImageDataset, batch_size: int, count: int, seed: int) -> list[Batch]:
    """The first `count` batches of a shuffle of `ds` seeded by `seed` (normalised, no augmentation;
    the last one may be short)."""
    if count <= 0:
        return []
    loader = BatchLoader(ds, batch_size, shuffle=True, seed=mix_seed(seed, BATCH_STREAM))
    if len(loader) < count:
        raise DataError(f"zero-cost scores: the {len(ds)} training images fill {len(loader)} batch(es) of "
                        f"{batch_size}, {count} are needed; use more images or a smaller batch_size")
    out = []
    for x, y in loader:
        out.append((x, y))
        if len(out) == count:
            break
    return out


def init_network(genotype: Genotype | None, build_kw: dict[str, Any], seed: int) -> nn.Module:
    """The network of `genotype` as a training seeded with `seed` initialises it (the global RNG
    state is left as it was)."""
    from bitnas.nets import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(genotype, **build_kw)


def protocol_inputs(cfg: Any, batches: int) -> tuple[dict[str, Any], list[Batch]]:
    """(build_network kwargs of the binary child, scoring batches) of the `bitnas train` config `cfg`."""
    from bitnas.data import load_dataset
    from bitnas.train.data import split_training_images
    from bitnas.train.build import build_kwargs

    kw = {"image_size": cfg.image_size} if cfg.image_size else {}
    train, _ = split_training_images(cfg, load_dataset(cfg.data, "train", **kw))
    return build_kwargs(cfg, train, cfg.precision), training_batches(train, cfg.batch_size, batches, cfg.seed)


def score_genotypes(cfg: Any, genotypes: Sequence[Genotype], names: Sequence[str],
                    batches: int = 0) -> dict[str, Any]:
    """Every estimator of `names` on the initialised protocol network of each genotype (its index
    in `genotypes`), on `batches` training batches (0 = as few as the estimators need)."""
    names = check_names(names, "zero_cost")
    build_kw, data = protocol_inputs(cfg, max(batches, batches_needed(names)))
    torch.set_num_threads(cfg.threads or 1)
    scores = []
    for i, g in enumerate(genotypes):
        model = init_network(g, build_kw, cfg.seed)
        scores.append({"index": i, **score_network(model, data, names)})
    return {"estimators": list(names), "seed": cfg.seed, "batches": len(data),
            "batch_size": cfg.batch_size, "scores": scores}


def main(argv: list[str] | None = None) -> int:
    from bitnas.config import update_config
    from bitnas.errors import BitnasError
    from bitnas.run import setup_logging
    from bitnas.train.config import TrainConfig
    from bitnas.common.files import atomic_write_json

    p = argparse.ArgumentParser(prog="python -m bitnas.study.estimators.protocol",
                                description="Zero-cost scores of genotypes under a training protocol (a study trial).")
    p.add_argument("config", help="the `bitnas train` config (YAML) of the genotypes' training")
    p.add_argument("genotypes", help="JSON list of genotypes")
    p.add_argument("--estimators", required=True, help="comma-separated zero-cost estimator names")
    p.add_argument("--batches", type=int, default=0, help="training batches (0 = as few as the estimators need)")
    p.add_argument("--out", required=True, help="scores JSON file to write")
    a = p.parse_args(argv)
    setup_logging()
    try:
        raw = yaml.safe_load(Path(a.config).read_text(encoding="utf-8")) or {}
        cfg = update_config(TrainConfig(), raw, a.config).validate()
        listed = json.loads(Path(a.genotypes).read_text(encoding="utf-8"))
        if not isinstance(listed, list):
            raise BitnasError(f"{a.genotypes}: expected a JSON list of genotypes")
        genotypes = [Genotype.from_dict(g, f"genotype {i}") for i, g in enumerate(listed)]
        res = score_genotypes(cfg, genotypes, [n for n in a.estimators.split(",") if n], a.batches)
        atomic_write_json(Path(a.out), res)
    except (BitnasError, OSError, ValueError, yaml.YAMLError) as e:
        print(f"bitnas: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
