"""Run pictures: the training plot is titled by what was trained and has whole-epoch ticks."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from bitnas.plots import plot_run, set_epoch_ticks, training_title


def test_training_title_names_the_network(tmp_path: Path) -> None:
    run = tmp_path / "t1"
    run.mkdir()
    cfg = {"command": "train", "genotype": "runs/c1/genotype.json", "precision": "binary", "init_channels": 8,
           "layers": 5, "data": "fashion-mnist"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert training_title(run) == "1-bit genotype of c1, C = 8, 5 cells, fashion-mnist (t1)"
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "genotype": "", "network": "bireal", "precision": "fp32"}))
    assert training_title(run) == "fp32 bireal, C = 8, 5 cells, fashion-mnist (t1)"
    recs = [{"epoch": e, "train_loss": 2.0 / e, "train_top1": 50.0 + e} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert [p.name for p in plot_run(run)] == ["training.png"]


def test_epoch_ticks_are_whole() -> None:
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0, 1])
    set_epoch_ticks(ax, [1, 2])
    assert list(ax.get_xticks()) == [1, 2]
    ax.plot(range(1, 41), range(40))
    set_epoch_ticks(ax, list(range(1, 41)))
    assert all(float(t).is_integer() for t in ax.get_xticks())
    plt.close(fig)
