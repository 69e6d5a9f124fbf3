"""Is the ground truth reproducible? Seed noise and budget agreement of a study's protocol.

A study's verdicts rest on one training per genotype and seed. Two measurements say whether that
ranks architectures reproducibly:

- **seed noise** — a `random_genotypes` arm with `seeds: [...]` trains every draw under several
  seeds. The one-way random-effects intraclass correlation ICC(1) says which share of the
  variance of a genotype's figure is between genotypes (1: seeds never reorder them; 0: the
  architecture explains nothing), beside the within-genotype (seed) and between-genotype
  spreads, and Kendall τ between the rankings two seeds give;
- **agreement between arms** — two `random_genotypes` arms of one space draw the same genotypes
  (draws are a pure function of space and index) under different protocol settings (e.g.
  `train: {epochs: 3}`): τ between the genotypes' figures under both says whether the cheaper
  setting ranks as the dearer one does.

Validation top-1 (the split that selects) is the figure; test top-1 is reported beside it.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np

from bitnas.study.fidelity import correlation, kendall_tau

METRICS = ("val_top1", "test_top1")


def _mean_squares(groups: Sequence[Sequence[float]]) -> tuple[float, float, float] | None:
    """(between-group mean square, within-group mean square, effective group size n0) of the
    groups with ≥ 2 measurements; None with fewer than 2 such groups."""
    gs = [np.asarray(g, dtype=np.float64) for g in groups if len(g) >= 2]
    if len(gs) < 2:
        return None
    sizes = np.array([len(g) for g in gs], dtype=np.float64)
    n, k = float(sizes.sum()), len(gs)
    grand = float(np.concatenate(gs).mean())
    msb = float(sum(len(g) * (g.mean() - grand) ** 2 for g in gs)) / (k - 1)
    msw = float(sum(((g - g.mean()) ** 2).sum() for g in gs)) / (n - k)
    return msb, msw, (n - float((sizes ** 2).sum()) / n) / (k - 1)


def icc1(groups: Sequence[Sequence[float]]) -> float:
    """One-way random-effects ICC(1) of groups of repeated measurements (unequal sizes allowed,
    with the usual effective group size n0); nan with fewer than 2 groups of ≥ 2 or no variance."""
    ms = _mean_squares(groups)
    if ms is None:
        return float("nan")
    msb, msw, n0 = ms
    den = msb + (n0 - 1.0) * msw
    return (msb - msw) / den if den > 0 else float("nan")


def icc1k(groups: Sequence[Sequence[float]]) -> float:
    """ICC(1,k): the reliability of a genotype's mean over its k seeds, (MSB − MSW) / MSB — with
    equal group sizes Spearman–Brown of ICC(1), k·ICC / (1 + (k − 1)·ICC). What a study that
    ranks genotypes by their seed mean can rely on; nan as for `icc1`."""
    ms = _mean_squares(groups)
    if ms is None or ms[0] <= 0:
        return float("nan")
    return (ms[0] - ms[1]) / ms[0]


def _bootstrap_icc(groups: list[list[float]], n: int, seed: int = 0) -> list[float]:
    """Percentile 95 % interval of ICC(1) over genotypes resampled with replacement."""
    if n <= 0 or len(groups) < 3:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    vals = [icc1([groups[i] for i in rng.integers(0, len(groups), len(groups))]) for _ in range(n)]
    vals = [v for v in vals if not np.isnan(v)]
    if not vals:
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(vals, [2.5, 97.5])]


def _by_genotype(records: list[dict[str, Any]], arm: str, metric: str) -> dict[int, dict[int, float]]:
    """genotype index → seed → figure, over the finished trainings of `arm`."""
    out: dict[int, dict[int, float]] = {}
    for r in records:
        if r.get("arm") == arm and r.get("kind") == "train" and isinstance(r.get(metric), (int, float)):
            out.setdefault(int(r["index"]), {})[int(r["seed"])] = float(r[metric])
    return out


def seed_noise(records: list[dict[str, Any]], arm: str, bootstrap: int = 1000) -> dict[str, Any]:
    """Seed noise of one arm's genotypes (those trained under ≥ 2 seeds), per metric."""
    out: dict[str, Any] = {"arm": arm}
    for metric in METRICS:
        by = _by_genotype(records, arm, metric)
        groups = [list(v.values()) for _, v in sorted(by.items()) if len(v) >= 2]
        within = [float(np.std(g, ddof=1)) for g in groups]
        means = [float(np.mean(g)) for g in groups]
        seeds = sorted({s for v in by.values() for s in v})
        pairs = []
        for a, b in itertools.combinations(seeds, 2):
            common = [i for i in sorted(by) if a in by[i] and b in by[i]]
            if len(common) >= 3:
                pairs.append({"seeds": [a, b], "m": len(common),
                              "kendall_tau": kendall_tau([by[i][a] for i in common], [by[i][b] for i in common])})
        taus = [p["kendall_tau"] for p in pairs if not np.isnan(p["kendall_tau"])]
        out[metric] = {
            "genotypes": len(groups), "trainings": sum(len(g) for g in groups),
            "icc": icc1(groups), "icc_ci": _bootstrap_icc(groups, bootstrap), "icc_mean": icc1k(groups),
            "seeds_per_genotype": float(np.mean([len(g) for g in groups])) if groups else float("nan"),
            "within_std": float(np.sqrt(np.mean(np.square(within)))) if within else float("nan"),
            "between_std": float(np.std(means, ddof=1)) if len(means) > 1 else float("nan"),
            "range_of_means": [min(means), max(means)] if means else None,
            "seed_pairs": pairs, "kendall_tau_between_seeds": float(np.mean(taus)) if taus else float("nan"),
        }
    return out


def arm_agreement(records: list[dict[str, Any]], a: str, b: str, bootstrap: int = 1000) -> dict[str, Any]:
    """τ and ρ between two arms' figures of the genotypes both trained (mean over each arm's seeds)."""
    out: dict[str, Any] = {"arms": [a, b]}
    for metric in METRICS:
        ba, bb = _by_genotype(records, a, metric), _by_genotype(records, b, metric)
        common = sorted(set(ba) & set(bb))
        x = [float(np.mean(list(ba[i].values()))) for i in common]
        y = [float(np.mean(list(bb[i].values()))) for i in common]
        out[metric] = correlation(x, y, bootstrap) if len(common) >= 3 else {"m": len(common)}
    return out


def protocol_agreement(spec: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed noise of every random_genotypes arm with `seeds:`, and agreement between every pair of
    random_genotypes arms drawing from the same space."""
    boot = spec.fidelity.bootstrap if spec.fidelity is not None else 1000
    rg = [a for a in spec.arms if a.kind == "random_genotypes"]
    noise = [seed_noise(records, a.name, boot) for a in rg if len(a.seeds) >= 2]
    pairs = [arm_agreement(records, a.name, b.name, boot) for a, b in itertools.combinations(rg, 2)
             if a.space == b.space]
    return {"seed_noise": [n for n in noise if n["val_top1"]["genotypes"] >= 2],
            "arm_agreement": [p for p in pairs if p["val_top1"].get("m", 0) >= 3]}
