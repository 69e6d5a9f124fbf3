"""Collapse remedies of the differentiable searches: the parameter-free cap holds on adversarial α,
the α temperature follows its closed-form schedule at every step, a search records both, and a
search stopped mid-epoch with both on resumes bitwise to the uninterrupted result."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bitnas.common import faults
from bitnas.search import darts, pcdarts, ubnas  # noqa: F401 - registers the strategies
from bitnas.search.collapse import TemperatureSchedule, cap_param_free
from bitnas.search.config import SearchConfig
from bitnas.search.runner import run_search
from bitnas.search.supernet import SuperNetwork, derive_genotype
from bitnas.space.config import OpConfig
from bitnas.space.genotypes import Genotype, is_parametric
from bitnas.space.spaces import get_space
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl

OPS = get_space("darts").ops  # none, max_pool, avg_pool, skip, sep3, sep5, dil3, dil5
E = 14


def pooling_strongest(seed: int = 0) -> torch.Tensor:
    """Adversarial strengths: on every edge a pooling op leads, the parametric ops trail by a random margin."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(E, len(OPS), generator=g) * 0.1
    s[:, 1] = 0.5 + torch.rand(E, generator=g) * 0.4  # max_pool strongest everywhere
    s[:, 0] = 2.0  # the zero op is never chosen, whatever its weight
    return s


def free_count(g: Genotype) -> dict[str, int]:
    return {c: sum(not is_parametric(op) for op, _ in getattr(g, c)) for c in ("normal", "reduce")}


@pytest.mark.parametrize("cap", [0, 1, 2, 5])
def test_cap_holds_on_all_pooling_alpha_and_replaces_the_weakest_margins(cap: int) -> None:
    n, r = pooling_strongest(0), pooling_strongest(1)
    free = derive_genotype(n, r, OPS)
    assert free_count(free) == {"normal": 8, "reduce": 8}
    capped = derive_genotype(n, r, OPS, max_param_free=cap)
    assert free_count(capped) == {"normal": cap, "reduce": cap}
    for cell, scores in (("normal", n), ("reduce", r)):
        before, after = getattr(free, cell), getattr(capped, cell)
        assert [i for _, i in before] == [i for _, i in after]  # the kept edges do not change
        rows = [sum(2 + k for k in range(e // 2)) + inp for e, (_, inp) in enumerate(before)]
        margins = []
        for e, ((op, _), row) in enumerate(zip(before, rows)):
            s = scores[row].tolist()
            best = max(range(4, 8), key=lambda k: s[k])
            margins.append((math.log(s[OPS.index(op)]) - math.log(s[best]), e, OPS[best]))
        replaced = sorted(margins)[:8 - cap]
        for _, e, best in replaced:
            assert after[e][0] == best
        untouched = {e for _, e, _ in sorted(margins)[8 - cap:]}
        assert all(after[e] == before[e] for e in untouched)


def test_cap_leaves_cells_within_it_and_the_default_alone() -> None:
    n = pooling_strongest(2)
    n[:, 4] = 1.5  # sep_conv_3x3 strongest everywhere: no parameter-free op to cap
    g = derive_genotype(n, n, OPS, max_param_free=0)
    assert free_count(g) == {"normal": 0, "reduce": 0}
    kept = [(0, 1, 0), (1, 3, 1)]
    assert cap_param_free(kept, n, OPS, -1) == kept and cap_param_free(kept, n, OPS, 2) == kept


def test_supernet_genotype_applies_its_cap() -> None:
    net = SuperNetwork(get_space("darts"), OpConfig(precision="binary", structure="darts"), init_channels=4, layers=2,
                       in_channels=1, num_classes=3)
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_normal[:, 2] = 3.0  # avg_pool strongest
        net.alphas_reduce.copy_(net.alphas_normal)
    assert net.genotype().parametric_ops() == {"normal": 0, "reduce": 0}
    net.max_param_free = 2
    assert net.genotype().parametric_ops() == {"normal": 6, "reduce": 6}


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_schedule_endpoints_and_shape(kind: str) -> None:
    s = TemperatureSchedule(5.0, 0.2, kind, 11)
    assert s.at(0) == 5.0 and s.at(10) == 0.2 and s.at(-3) == 5.0 and s.at(99) == 0.2
    mid = s.at(5)
    assert mid == pytest.approx(1.0 if kind == "exponential" else 2.6)
    assert TemperatureSchedule(1.0, 1.0, kind, 11).constant and TemperatureSchedule(2.0, 0.5, kind, 1).at(0) == 2.0


def closed_form(t0: float, t1: float, kind: str, steps: int, s: int) -> float:
    p = min(s, steps - 1) / (steps - 1)
    return t0 * (t1 / t0) ** p if kind == "exponential" else t0 + (t1 - t0) * p


# Two weight steps an epoch (16 of the 32 images train the weights, batch 8): enough to tell a per-step
# schedule from a per-epoch one, at half the images of a batch of 16.
TINY = dict(data="fashion-mnist-embedded", train_subset=32, batch_size=8, init_channels=4, layers=2, progress="off",
            threads=1)


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_temperature_at_every_step_is_the_closed_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      kind: str) -> None:
    """The T seen by every weight step and every α step, and recorded per epoch, is the schedule's."""
    seen: dict[str, list[float]] = {"weight": [], "arch": []}
    real_weight_step, real_arch_step = darts.weight_step, darts.Architect.step

    def weight_step(ctx, model, *a, **k):
        seen["weight"].append(model.temperature)
        return real_weight_step(ctx, model, *a, **k)

    def arch_step(self, *a, **k):
        seen["arch"].append(self.model.temperature)
        return real_arch_step(self, *a, **k)

    monkeypatch.setattr(darts, "weight_step", weight_step)
    monkeypatch.setattr(darts.Architect, "step", arch_step)
    cfg = SearchConfig(strategy="pcdarts", epochs=3, warmup_epochs=1, alpha_temperature=4.0, alpha_temperature_end=0.25,
                       alpha_temperature_schedule=kind, out=str(tmp_path / "run"), **TINY)
    run_search(cfg)
    per_epoch = 2  # 16 weight images / batch 8
    steps = 3 * per_epoch
    want = [closed_form(4.0, 0.25, kind, steps, s) for s in range(steps)]
    assert seen["weight"] == pytest.approx(want, rel=1e-12) and seen["weight"][-1] == 0.25
    assert seen["arch"] == pytest.approx(want[per_epoch:], rel=1e-12)  # no α steps in the warm-up epoch
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["alpha_temperature"] for r in recs] == pytest.approx([want[1], want[3], want[5]], rel=1e-12)
    # the recorded α are softmax(α / T) of the final α at the last T
    ck = load_checkpoint(tmp_path / "run" / "last.pt")["strategy"]["model"]
    expect = torch.softmax(ck["alphas_normal"] / 0.25, -1)
    assert torch.allclose(torch.tensor(recs[-1]["alphas"]["normal"]), expect.float(), atol=1e-6)


def test_search_with_both_remedies_records_them(tmp_path: Path) -> None:
    cfg = SearchConfig(strategy="ubnas", epochs=2, warmup_epochs=0, max_param_free_ops=1, alpha_temperature=2.0,
                       alpha_temperature_end=0.5, early_stop="none", arch_lr=0.3, out=str(tmp_path / "run"), **TINY)
    result = run_search(cfg)
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert recs[0]["alpha_temperature"] > recs[-1]["alpha_temperature"] == 0.5
    for r in recs:
        assert all(v <= 1 for v in free_count(Genotype.from_dict(r["genotype"])).values())
    saved = json.loads((tmp_path / "run" / "genotype.json").read_text())
    assert saved["settings"]["max_param_free_ops"] == 1 and saved["settings"]["alpha_temperature"] == [2.0, 0.5]
    assert all(v <= 1 for v in free_count(Genotype.from_dict(result["genotype"])).values())
    cfg_text = (tmp_path / "run" / "config.yaml").read_text()
    assert "max_param_free_ops: 1" in cfg_text and "alpha_temperature_end: 0.5" in cfg_text


@pytest.mark.slow  # tens of seconds: a run killed and resumed, a study, or two ranks
def test_stopped_mid_epoch_with_remedies_resumes_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM after the 3rd step (inside epoch 2 of 3); the resumed search ends bitwise where an
    uninterrupted one ends: α, weights, metrics (temperature included) and genotype."""
    from bitnas.common.signals import Interrupted

    common = dict(strategy="pcdarts", epochs=3, warmup_epochs=1, max_param_free_ops=2, alpha_temperature=3.0,
                  alpha_temperature_end=0.3, **TINY)
    full = run_search(SearchConfig(out=str(tmp_path / "full"), **common))
    monkeypatch.setenv(faults.ENV, json.dumps([{"at": "search.step", "index": 3, "do": "signal", "signal": "SIGTERM"}]))
    with pytest.raises(Interrupted):
        run_search(SearchConfig(out=str(tmp_path / "part"), **common))
    monkeypatch.delenv(faults.ENV)
    stopped = load_checkpoint(tmp_path / "part" / "last.pt")
    assert stopped["records"] == 1 and stopped["strategy"]["partial"] is not None
    resumed = run_search(SearchConfig(out=str(tmp_path / "part"), **common), resume=True)
    assert resumed["genotype"] == full["genotype"]
    drop = ("seconds", "elapsed")
    ra, rb = ([{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(tmp_path / d / "metrics.jsonl")]
              for d in ("full", "part"))
    assert ra == rb and [r["alpha_temperature"] for r in ra][-1] == 0.3
    sa, sb = (load_checkpoint(tmp_path / d / "last.pt")["strategy"]["model"] for d in ("full", "part"))
    for name, t in sa.items():
        assert torch.equal(t, sb[name]), name


def test_search_learning_rate_per_epoch_is_the_cosine_schedule(tmp_path: Path) -> None:
    """Differentiable and random searches step the shared LRSchedule once an epoch: epoch e trains
    at w_lr_min + (w_lr − w_lr_min)·(1 + cos(π e / E)) / 2."""
    for strategy, extra in (("darts", {}), ("random", {"random_samples": 1})):
        out = tmp_path / strategy
        cfg = SearchConfig(strategy=strategy, epochs=3, w_lr=0.05, w_lr_min=0.001, out=str(out), **TINY, **extra)
        run_search(cfg)
        lrs = [r["lr"] for r in read_jsonl(out / "metrics.jsonl") if "lr" in r]
        want = [0.001 + 0.049 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
        assert lrs == pytest.approx(want, rel=1e-12), strategy
