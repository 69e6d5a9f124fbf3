"""Random search: uniform genotypes from the space, single paths, a tiny end-to-end run."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from bitnas.search.config import SearchConfig
from bitnas.search.supernet import genotype_paths
from bitnas.space.genotypes import random_genotype
from bitnas.search.runner import run_search
from bitnas.search.supernet import SuperNetwork
from bitnas.space.config import OpConfig
from bitnas.space.genotypes import Genotype
from bitnas.space.spaces import get_space


@pytest.mark.parametrize("space", ["darts", "ubnas", "ubnas_nozero"])
def test_random_genotypes_are_valid_and_cover_every_op(space: str) -> None:
    sp = get_space(space)
    gen = torch.Generator().manual_seed(0)
    ops, inputs = Counter(), Counter()
    for _ in range(300):
        g = random_genotype(sp.ops, sp.zero_op, gen)
        Genotype.from_dict(g.to_dict())  # validates op names and inputs
        for cell in (g.normal, g.reduce):
            for i in range(4):
                (o1, a), (o2, b) = cell[2 * i], cell[2 * i + 1]
                assert a < b < i + 2  # two distinct inputs per node
                inputs[(i, a)] += 1
                inputs[(i, b)] += 1
            ops.update(o for o, _ in cell)
    assert set(ops) == set(sp.without_zero())
    expected = 300 * 2 * 8 / len(sp.without_zero())
    assert all(abs(n - expected) < 0.2 * expected for n in ops.values())  # uniform over non-zero ops
    assert len(inputs) == sum(2 + i for i in range(4))  # every input of every node is drawn


def test_draws_are_seeded() -> None:
    sp = get_space("darts")
    a = [random_genotype(sp.ops, sp.zero_op, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert a[0] == a[1]


def test_genotype_paths_run_exactly_the_genotype() -> None:
    sp = get_space("darts")
    g = random_genotype(sp.ops, sp.zero_op, torch.Generator().manual_seed(1))
    paths = genotype_paths(g, sp.ops)
    for cell in ("normal", "reduce"):
        p = paths[cell]
        assert len(p) == 14 and sum(i >= 0 for i in p) == 8
        kept = [(sp.ops[p[e]], j) for i in range(4) for j, e in enumerate(range(sum(2 + k for k in range(i)),
                                                                                 sum(2 + k for k in range(i + 1))))
                if p[e] >= 0]
        assert tuple(kept) == getattr(g, cell)
    net = SuperNetwork(sp, OpConfig(precision="binary", structure="darts"), init_channels=4, layers=3,
                       in_channels=1, num_classes=3)
    assert net(torch.randn(2, 1, 8, 8), paths=paths)[0].shape == (2, 3)


def test_tiny_random_search_scores_samples_and_returns_the_best(tmp_path: Path) -> None:
    common = dict(strategy="random", data="fashion-mnist-embedded", train_subset=60, batch_size=30, init_channels=4,
                  layers=2, random_samples=3, progress="off", threads=1)
    res = run_search(SearchConfig(epochs=1, out=str(tmp_path / "a"), **common))
    saved = json.loads((tmp_path / "a" / "genotype.json").read_text())
    assert len(saved["samples"]) == 3 and all("val_acc" in s for s in saved["samples"])
    best = max(saved["samples"], key=lambda s: s["val_acc"])
    assert saved["genotype"] == best["genotype"] == res["genotype"]
    assert Genotype.from_dict(saved["genotype"]).validate()
    pure = run_search(SearchConfig(epochs=0, out=str(tmp_path / "b"), **common))
    assert pure["genotype"] == pure["samples"][0]["genotype"] and pure["units"] == 1
    assert pure["samples"][0]["genotype"] == saved["samples"][0]["genotype"]  # same seed, same draws
