"""Zero-cost scores under a training protocol: the network training starts from, training images only."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bitnas.nets import build_network
from bitnas.space.genotypes import load_genotype
from bitnas.study.estimators import protocol
from bitnas.train.config import TrainConfig
from bitnas.common.rng import seed_everything

REPO = Path(__file__).resolve().parents[2]
CFG = dict(data="fashion-mnist-embedded", init_channels=2, layers=2, batch_size=16, structure="bireal",
           activation="approx_sign", train_subset=80, seed=5, threads=1)


def test_init_network_is_the_network_training_starts_from() -> None:
    g = load_genotype("DARTS_V2")
    kw = dict(init_channels=2, layers=2, num_classes=10, in_channels=1, structure="bireal")
    seed_everything(5)
    reference = build_network(g, **kw).state_dict()  # what Trainer does: seed_everything, then build
    torch.manual_seed(123)
    before = torch.get_rng_state()
    mine = protocol.init_network(g, kw, 5).state_dict()
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    assert reference.keys() == mine.keys() and all(torch.equal(reference[k], mine[k]) for k in mine)


def test_scores_read_no_test_image_and_are_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    from bitnas import data

    real = data.load_dataset

    def train_only(spec: str, split: str, **kw):
        assert split == "train", "a zero-cost score read the test split"
        return real(spec, split, **kw)

    monkeypatch.setattr(data, "load_dataset", train_only)
    gs = [load_genotype("DARTS_V2"), load_genotype("PC_DARTS_cifar")]
    names = ["params", "synflow", "grad_norm", "naswot", "zico"]
    a = protocol.score_genotypes(TrainConfig(**CFG), gs, names)
    b = protocol.score_genotypes(TrainConfig(**CFG), gs, names)
    c = protocol.score_genotypes(TrainConfig(**{**CFG, "seed": 6}), gs, names)
    assert a == b and a["batches"] == 2 and [s["index"] for s in a["scores"]] == [0, 1]
    assert a["scores"][0]["params"] == c["scores"][0]["params"]
    assert a["scores"][0]["synflow"] != c["scores"][0]["synflow"]  # another seed, another initialisation


def test_worker_writes_scores_and_refuses_bad_input(tmp_path: Path) -> None:
    cfg, gts = tmp_path / "trial.yaml", tmp_path / "genotypes.json"
    cfg.write_text(yaml.safe_dump(CFG))
    gts.write_text(json.dumps([load_genotype("DARTS_V2").to_dict()]))
    run = lambda *extra: subprocess.run([sys.executable, "-m", "bitnas.study.estimators.protocol", str(cfg), str(gts),
                                         "--out", str(tmp_path / "s.json"), *extra], cwd=REPO, capture_output=True,
                                        text=True, timeout=300)
    p = run("--estimators", "params,naswot")
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["estimators"] == ["params", "naswot"] and len(res["scores"]) == 1
    p = run("--estimators", "params,nasowt")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("bitnas: error:") and "naswot" in p.stderr
