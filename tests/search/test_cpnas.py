"""CP-NAS search (METHODS §4.4): sampling without replacement, indicator, removal, 1-bit child (exact resume: tests/test_crash_resume.py)."""
from __future__ import annotations

import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from bitnas.binary import binarized_layers
from bitnas.binary.layers import BinaryConv2d
from bitnas.config import update_config
from bitnas.data import ImageDataset
from bitnas.run import RunDir
from bitnas.search.config import SearchConfig
from bitnas.search.cpnas import (
    CELLS, CPNASSearch, indicator, pack_tensors, removal_choice, unpack_tensors,
)
from bitnas.search.strategy import SearchContext

torch.set_num_threads(1)

TINY = {"init_channels": 4, "layers": 3, "batch_size": 16, "rounds": 1, "sample_steps": 1, "val_subset": 32,
        "cp_eval_batch": 32, "progress": "off", "seed": 0}


def random_set(n: int, seed: int, size: int = 8) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, 10, (0.5,), (0.25,), "random", f"random:{seed}")


def make_strategy(tmp_path: Path, n_train: int = 48, **over: Any) -> CPNASSearch:
    """A CP-NAS strategy on random 8×8 images (n_train train, 32 validation)."""
    cfg = update_config(SearchConfig(), {**TINY, "strategy": "cpnas", "out": str(tmp_path / "run"), **over}, "test")
    ctx = SearchContext(cfg=cfg, device=torch.device("cpu"), train_set=random_set(n_train, 1),
                        val_set=random_set(32, 2), run=RunDir(cfg.out))
    return CPNASSearch(ctx)


def scripted(strat: CPNASSearch, score: Any, write: bool = False) -> list[dict[str, Any]]:
    """Run a whole search with training skipped and accuracies from `score(which, paths)`;
    cpnas_history.json and the plot only when `write`."""
    strat._train = lambda steps, paths, random_paths=False: {}  # type: ignore[method-assign]
    strat.measure = score  # type: ignore[method-assign]
    if not write:
        strat._write_results = lambda: None  # type: ignore[method-assign]
    records = []
    while not strat.finished:
        records.append(strat.run_unit())
    return records


def noise(which: str, paths: dict[str, list[int]]) -> float:
    """A deterministic pseudo-accuracy in [40, 60) that differs between samples and networks."""
    h = zlib.crc32(repr((which, paths["normal"], paths["reduce"])).encode())
    return 40.0 + (h % 2000) / 100.0


# -- arithmetic ------------------------------------------------------------------------------

@pytest.mark.parametrize("a_c, a_p, beta, printed, flipped", [
    (60.0, 80.0, 0.5, 70.0, 50.0),
    (60.0, 80.0, 1.0, 80.0, 40.0),
    (60.0, 80.0, 2.0, 100.0, 20.0),
    (60.0, 80.0, 0.0, 60.0, 60.0),
    (70.0, 65.0, 1.5, 62.5, 77.5),
    (12.5, 40.0, 0.25, 19.375, 5.625),
])
def test_indicator_arithmetic(a_c: float, a_p: float, beta: float, printed: float, flipped: float) -> None:
    assert indicator(a_c, a_p, beta, "printed") == pytest.approx(printed, abs=1e-12)
    assert indicator(a_c, a_p, beta, "flipped") == pytest.approx(flipped, abs=1e-12)


def test_removal_choice_rules() -> None:
    ops = [0, 2, 5, 7]

    def choose(ops: list[int], z: list[float], first: bool = False, drop: bool = False,
               zero: int | None = 0) -> tuple[int, str]:
        return removal_choice(ops, z, zero=zero, first_step=first, drop_zero_first=drop)

    assert choose(ops, [3.0, 1.0, 2.0, 4.0]) == (2, "lowest_score")
    # a tie removes the op listed first in the space
    assert choose(ops, [3.0, 1.0, 1.0, 4.0])[0] == 2
    assert choose([3, 6], [1.0, 1.0])[0] == 3
    # zero never survives alone, and goes first with drop_zero_first
    assert choose([0, 4], [9.0, 1.0]) == (0, "zero_never_survives")
    assert choose(ops, [9.0, 1.0, 2.0, 4.0], first=True, drop=True) == (0, "drop_zero_first")
    assert choose(ops, [9.0, 1.0, 2.0, 4.0], drop=True)[0] == 2
    assert choose([1, 4], [9.0, 1.0], zero=None)[0] == 4


def test_pack_tensors_roundtrip() -> None:
    obj = {"a": torch.randn(3, 2), "b": [torch.tensor(5), (torch.zeros(0), 1.5)],
           "c": {0: {"m": torch.arange(4, dtype=torch.int64)}}, "d": "x"}
    back = unpack_tensors(pack_tensors(obj))
    assert torch.equal(back["a"], obj["a"]) and back["b"][0].dtype == torch.int64 and int(back["b"][0]) == 5
    assert isinstance(back["b"][1], tuple) and back["b"][1][0].shape == (0,) and back["b"][1][1] == 1.5
    assert torch.equal(back["c"][0]["m"], obj["c"][0]["m"]) and back["d"] == "x"


# -- the sampling loop -----------------------------------------------------------------------

def test_sampling_covers_each_op_once_per_round_and_removes_one_per_step(tmp_path: Path) -> None:
    strat = make_strategy(tmp_path, rounds=2)
    n_ops, n_edges = len(strat.ops), strat.num_edges
    records = scripted(strat, noise, write=True)
    samples = [r for r in records if r["kind"] == "sample"]
    removals = [r for r in records if r["kind"] == "removal"]
    assert len(removals) == n_ops - 1 and strat.ops_left == 1
    assert len(samples) == 2 * sum(range(2, n_ops + 1)) == strat.total_samples
    remaining = {c: [set(strat.ops) for _ in range(n_edges)] for c in CELLS}
    for step, rem in enumerate(removals):
        k = n_ops - step
        assert (rem["K_before"], rem["K_after"]) == (k, k - 1)
        mine = [s for s in samples if s["removal_step"] == step]
        assert len(mine) == 2 * k and all(s["K"] == k for s in mine)
        for t in range(2):
            round_samples = [s for s in mine if s["round"] == t]
            assert [s["sample"] for s in round_samples] == list(range(k))
            for c in CELLS:
                for edge in range(n_edges):
                    drawn = Counter(s["ops"][c][edge] for s in round_samples)
                    assert drawn == Counter(remaining[c][edge]), (step, t, c, edge)
        for c in CELLS:
            assert len(rem["edges"][c]) == n_edges
            for edge, info in enumerate(rem["edges"][c]):
                assert set(info["ops"]) == remaining[c][edge] and len(info["ops"]) == k
                assert info["removed"] in remaining[c][edge]
                assert sum(info["e"]) == pytest.approx(1.0)
                remaining[c][edge].discard(info["removed"])
                assert len(remaining[c][edge]) == k - 1
    survivors = strat.survivors()
    for c in CELLS:
        assert [set(s) for s in survivors[c]] == remaining[c]
        assert all(s != ["none"] for s in survivors[c])
    g = strat.genotype().validate()
    for c in CELLS:
        for op, inp in getattr(g, c):
            assert op != "none"
    hist = json.loads((tmp_path / "run" / "cpnas_history.json").read_text())
    assert len(hist["removals"]) == n_ops - 1 and hist["genotype"] == g.to_dict()
    assert (tmp_path / "run" / "plots" / "cpnas_scores.png").stat().st_size > 10_000


@pytest.mark.parametrize("kind", ["printed", "flipped"])
def test_op_that_always_scores_worst_is_removed(tmp_path: Path, kind: str) -> None:
    strat = make_strategy(tmp_path, indicator=kind, beta_p=0.5)
    bad_edge, bad_op = 3, strat.ops.index("sep_conv_3x3")

    def score(which: str, paths: dict[str, list[int]]) -> float:
        base = noise(which, paths)
        if paths["normal"][bad_edge] == bad_op:
            return 5.0 if which == "child" else base  # a huge binarisation gap and a poor child
        return base

    records = scripted(strat, score)
    first = next(r for r in records if r["kind"] == "removal")
    info = first["edges"]["normal"][bad_edge]
    assert info["removed"] == "sep_conv_3x3" and info["reason"] == "lowest_score"
    assert min(info["e"]) == info["e"][info["ops"].index("sep_conv_3x3")]
    assert "sep_conv_3x3" not in strat.survivors()["normal"][bad_edge]


def test_drop_zero_first_and_zero_never_survives(tmp_path: Path) -> None:
    def zero_wins(which: str, paths: dict[str, list[int]]) -> float:
        return 90.0 if paths["normal"][0] == 0 else noise(which, paths)

    strat = make_strategy(tmp_path / "a")
    records = scripted(strat, zero_wins)
    last = [r for r in records if r["kind"] == "removal"][-1]["edges"]["normal"][0]
    assert last["removed"] == "none" and last["reason"] == "zero_never_survives"
    assert last["e"][last["ops"].index("none")] > 0.5 and strat.survivors()["normal"][0] != ["none"]

    strat = make_strategy(tmp_path / "b", cp_drop_zero_first=True)
    records = scripted(strat, zero_wins)
    first = next(r for r in records if r["kind"] == "removal")
    assert all(e["removed"] == "none" for c in CELLS for e in first["edges"][c])


@pytest.mark.parametrize("mode", ["path", "mixed"])
def test_warmup_and_image_accounting(tmp_path: Path, mode: str) -> None:
    strat = make_strategy(tmp_path, n_train=32, cp_warmup_epochs=1, cp_warmup_mode=mode, sample_steps=2)
    rec = strat.run_unit()
    assert rec["kind"] == "warmup" and strat.images == 2 * 32 and strat.step == 2
    assert all(torch.isfinite(torch.tensor(rec[f"train_loss_{n}"])) for n in ("child", "parent"))
    rec = strat.run_unit()
    assert rec["kind"] == "sample" and rec["K"] == 8 and strat.step == 4
    assert strat.images == 2 * 32 + 2 * 2 * 16 + 2 * 32
    a_p, a_c = rec["acc_parent"], rec["acc_child"]
    assert 0.0 <= a_c <= 100.0 and rec["z"] == pytest.approx(strat.cfg.beta_p * (a_p - a_c) + a_c)
    assert strat.total_steps == 2 + strat.total_samples * 2


def test_concurrent_child_and_parent_give_bitwise_the_same_weights(tmp_path: Path) -> None:
    runs = []
    for concurrent in (True, False):
        torch.manual_seed(0)
        strat = make_strategy(tmp_path / str(concurrent), cp_concurrent=concurrent, sample_steps=2)
        assert (strat._pool is not None) == concurrent
        recs = [strat.run_unit() for _ in range(2)]
        runs.append((recs, unpack_tensors(strat.state_dict()["weights"])["nets"], strat.images))
    (ra, wa, ia), (rb, wb, ib) = runs
    assert [(r["acc_child"], r["acc_parent"]) for r in ra] == [(r["acc_child"], r["acc_parent"]) for r in rb]
    assert ia == ib
    for name in ("child", "parent"):
        assert all(torch.equal(wa[name][k], wb[name][k]) for k in wa[name]), name


def test_partial_channels_option_runs_single_paths(tmp_path: Path) -> None:
    strat = make_strategy(tmp_path, cp_partial_channels=True, k_normal=2, k_reduce=4)
    assert strat.k == (2, 4) and strat.child.cells[0].edges[0].k == 2
    rec = strat.run_unit()
    assert rec["kind"] == "sample" and 0.0 <= rec["acc_child"] <= 100.0


# -- precision -------------------------------------------------------------------------------

def test_child_is_one_bit_and_parent_is_full_precision(tmp_path: Path) -> None:
    strat = make_strategy(tmp_path)
    layers = binarized_layers(strat.child)
    assert layers, "the child has no binarised conv"
    seen: dict[str, int] = {}

    def check(name: str):
        def hook(mod: BinaryConv2d, inputs: tuple[torch.Tensor, ...]) -> None:
            assert mod.input_quantizer is not None, f"{name}: full-precision input"
            q = mod.input_quantizer(inputs[0])
            assert set(q.unique().tolist()) <= {-1.0, 1.0}, name
            w = mod.binary_weight().detach()
            mags = w.abs().reshape(w.shape[0], -1)
            assert torch.equal(mags, mags[:, :1].expand_as(mags)), f"{name}: more than one magnitude per channel"
            assert set(torch.sign(w).unique().tolist()) <= {-1.0, 1.0}
            seen[name] = seen.get(name, 0) + 1
        return hook

    handles = [m.register_forward_pre_hook(check(n)) for n, m in layers]
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        for op in range(len(strat.ops)):
            strat.child(x, paths={c: [op] * strat.num_edges for c in CELLS})
    for h in handles:
        h.remove()
    conv_ops = {n for n, _ in layers if ".ops." in n}
    assert conv_ops and conv_ops <= set(seen), "some binary op convs never ran"
    assert not binarized_layers(strat.parent)
    assert not any(isinstance(m, BinaryConv2d) and m.input_quantizer is not None for m in strat.parent.modules())
    assert [n for n, _ in strat.parent.named_parameters()] == [n for n, _ in strat.child.named_parameters()]
