"""UBNAS: early-stopping criteria on constructed histories, module structures, a real early stop."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bitnas.search import ubnas  # noqa: F401 - registers the strategy
from bitnas.search.config import SearchConfig
from bitnas.search.early_stopping import EarlyStopping, count_skips, genotype_distance, ranking
from bitnas.search.runner import run_search
from bitnas.search.supernet import SuperNetwork, derive_genotype
from bitnas.space.config import OpConfig
from bitnas.space.genotypes import Genotype
from bitnas.space.spaces import get_space
from bitnas.space.structures import STRUCTURES
from bitnas.common.files import read_jsonl

CONCAT = (2, 3, 4, 5)
BASE = (("conv_3x3", 0), ("conv_5x5", 1), ("conv_3x3", 0), ("avg_pool_3x3", 2), ("conv_3x3", 1),
        ("max_pool_3x3", 3), ("conv_5x5", 2), ("dil_full_conv_3x3", 4))


def geno(normal=BASE) -> Genotype:
    return Genotype(normal=normal, normal_concat=CONCAT, reduce=BASE, reduce_concat=CONCAT)


def rank(seed: int) -> dict:
    return {"normal": [[seed, 1], [0, 1]], "reduce": [[2, 3], [1, 0]]}


def run(stopper: EarlyStopping, history: list[tuple[dict, Genotype]]) -> list[str]:
    return [stopper.update(r, g) for r, g in history]


def test_skip_criterion_fires_on_two_skips() -> None:
    one_skip = geno(BASE[:2] + (("skip_connect", 0),) + BASE[3:])
    two_skips = geno(BASE[:2] + (("skip_connect", 0), ("skip_connect", 2)) + BASE[4:])
    assert count_skips(two_skips) == 2
    s = EarlyStopping("skip", skips=2)
    assert run(s, [(rank(0), geno()), (rank(1), one_skip), (rank(2), two_skips)]) == ["", "", "skip"]
    assert "2 skip connections" in s.detail


def test_stable_and_genotype_criteria_count_unchanged_epochs() -> None:
    g1 = geno()
    g2 = geno(BASE[:-1] + (("conv_3x3", 4),))
    hist = [(rank(0), g1), (rank(1), g1), (rank(1), g2), (rank(1), g2), (rank(1), g2)]
    # ranking: changes at epoch 1, then unchanged at epochs 2, 3 → patience 2 fires at epoch 3
    assert run(EarlyStopping("stable", patience=2), hist) == ["", "", "", "stable", "stable"]
    # genotype: unchanged at epoch 1, changes at 2, unchanged at 3, 4 → patience 2 fires at epoch 4
    assert run(EarlyStopping("genotype", patience=2), hist) == ["", "", "", "", "genotype"]
    assert run(EarlyStopping("genotype", patience=1), hist) == ["", "genotype", "genotype", "genotype", "genotype"]
    assert run(EarlyStopping("none", patience=1), hist) == [""] * 5


def test_any_takes_the_first_criterion_and_min_epochs_delays() -> None:
    g1 = geno()
    hist = [(rank(0), g1), (rank(1), g1), (rank(1), g1), (rank(1), g1)]
    assert run(EarlyStopping("any", patience=1), hist)[1] == "genotype"
    assert run(EarlyStopping("any", patience=1), hist)[2] == "genotype"
    s = EarlyStopping("any", patience=1)
    assert run(s, hist[:1] + [(rank(0), g1)]) == ["", "stable"]  # stable is checked before genotype
    late = EarlyStopping("genotype", patience=1, min_epochs=3)
    assert run(late, hist) == ["", "", "genotype", "genotype"]


def test_early_stopping_state_round_trip() -> None:
    s = EarlyStopping("stable", patience=2)
    run(s, [(rank(0), geno()), (rank(1), geno())])
    t = EarlyStopping("stable", patience=2)
    t.load_state_dict(s.state_dict())
    assert run(t, [(rank(1), geno()), (rank(1), geno())]) == ["", "stable"]


def test_ranking_of_hand_set_scores() -> None:
    ops = get_space("ubnas").ops  # none first
    scores = torch.full((14, 8), 0.1)
    scores[0, 0] = 9.0   # none is never the best op
    scores[0, 4] = 0.5
    scores[1, 5] = 0.7
    r = ranking(scores, ops, 4, "none")
    assert r[0][:2] == [4, 5]
    assert r[1][:2] == [1, 0]  # node 0: edge 1 (0.7) before edge 0 (0.5)


@pytest.mark.parametrize("structure", STRUCTURES.names())
def test_ubnas_supernet_builds_with_every_structure(structure: str) -> None:
    sp = get_space("ubnas")
    net = SuperNetwork(sp, OpConfig(precision="binary", structure=structure, activation=sp.activation),
                       init_channels=8, layers=3, in_channels=1, num_classes=4, k_normal=8, k_reduce=4, edge_norm=True)
    logits = net(torch.randn(2, 1, 8, 8))[0]
    logits.sum().backward()
    assert logits.shape == (2, 4) and net.alphas_normal.grad is not None


def test_real_search_stops_early_and_records_why(tmp_path: Path) -> None:
    cfg = SearchConfig(strategy="ubnas", data="fashion-mnist-embedded", train_subset=60, batch_size=30, epochs=5,
                       init_channels=8, layers=2, warmup_epochs=0, early_stop="genotype", early_stop_patience=1,
                       arch_lr=1e-7, out=str(tmp_path / "run"), progress="off", threads=1)
    result = run_search(cfg)
    assert result["stop_reason"] == "early_stop:genotype"
    assert result["stop_epoch"] == 1 and result["epochs_run"] == 2
    saved = json.loads((tmp_path / "run" / "genotype.json").read_text())
    assert saved["stop_reason"] == "early_stop:genotype" and saved["stop_epoch"] == 1
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(recs) == 2 and recs[-1]["stop_reason"] == "early_stop:genotype" and recs[-1]["stop_epoch"] == 1
    assert "stop_reason" not in recs[0]


def alpha_trajectory(settles: bool, epochs: int = 10, seed: int = 0) -> list[tuple[dict, Genotype]]:
    """(ranking, genotype) per epoch derived from constructed α. Settling: a fixed direction grows
    by a constant step per epoch (as Adam moves α) under fresh noise of constant size, so near-ties
    resolve and the genotype changes less and less. Not settling: fresh noise only, no direction."""
    ops = get_space("ubnas").ops
    g = torch.Generator().manual_seed(seed)
    direction = {c: torch.randn(14, len(ops), generator=g) for c in ("normal", "reduce")}
    out = []
    for t in range(epochs):
        a = {c: (0.03 * (t + 1) * direction[c] if settles else 0) + 0.01 * torch.randn(14, len(ops), generator=g)
             for c in ("normal", "reduce")}
        s = {c: torch.softmax(a[c], -1) for c in a}
        out.append(({c: ranking(s[c], ops, 4, "none") for c in s}, derive_genotype(s["normal"], s["reduce"], ops)))
    return out


@pytest.mark.parametrize("tolerance", [0, 2])
def test_genotype_criterion_fires_on_a_settling_alpha_trajectory_only(tolerance: int) -> None:
    settling, drifting = alpha_trajectory(True, 12), alpha_trajectory(False, 12)
    s = EarlyStopping("genotype", patience=3, tolerance=tolerance)
    fired = run(s, settling)
    assert "genotype" in fired
    first = fired.index("genotype")
    window = [g.to_dict() for _, g in settling[first - 3:first + 1]]
    assert all(genotype_distance(window[-1], w) <= tolerance for w in window[:-1])
    changes = [genotype_distance(a.to_dict(), b.to_dict()) for (_, a), (_, b) in zip(settling, settling[1:])]
    assert changes[0] > changes[-1]  # the constructed trajectory does settle
    d = EarlyStopping("genotype", patience=3, tolerance=tolerance)
    assert run(d, drifting) == [""] * 12
    assert d.changes is not None and d.changes > tolerance


def test_tolerance_counts_edges_against_every_genotype_of_the_window() -> None:
    g0 = geno()
    g1 = geno(BASE[:-1] + (("conv_5x5", 4),))                        # 1 edge from g0
    g2 = geno(BASE[:-2] + (("conv_5x5", 1), ("conv_5x5", 4)))        # 1 edge from g1, 2 from g0
    assert genotype_distance(g0.to_dict(), g2.to_dict()) == 2
    hist = [(rank(0), g) for g in (g0, g1, g2)]
    assert run(EarlyStopping("genotype", patience=2, tolerance=1), hist) == [""] * 3
    assert run(EarlyStopping("genotype", patience=2, tolerance=2), hist)[-1] == "genotype"
    s = EarlyStopping("genotype", patience=1, tolerance=1)
    assert run(s, [(rank(0), g0), (rank(0), g1)]) == ["", "genotype"] and "beyond 1 edge" in s.detail and s.changes == 1
