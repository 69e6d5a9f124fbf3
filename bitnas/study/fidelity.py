"""Rank fidelity (METHODS §7): does a search's own estimate rank architectures as training them does?

Ground truth: the validation top-1 of M genotypes trained stand-alone under the study protocol
(the validation split is carved from the training images; the test split plays no part, so the
fidelity figures can be used to choose search settings). Estimators: each search's own score of
a genotype in its trained state (`SearchStrategy.estimate`): the CP-NAS indicator z of the path
(and its parts A_C, A_P), the α-based score of DARTS / PC-DARTS / UBNAS, the weight-sharing
accuracy of random search; and zero-cost estimators of the untrained network
(`bitnas.study.estimators`, the study's zero_cost trials). Reported: Kendall τ-b and Spearman ρ
with percentile bootstrap 95 % intervals (genotypes resampled with replacement).

`python -m bitnas.study.fidelity SEARCH_DIR GENOTYPES.json --out SCORES.json` scores a list of
genotypes with a finished (or interrupted) search's last checkpoint: the study's score trials.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


# ---------------------------------------------------------------------------- statistics

def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b (tie-corrected); nan when either side is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = np.sign(a[:, None] - a[None, :])
    dy = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    s = float((dx * dy)[iu].sum())
    nx, ny = float((dx[iu] != 0).sum()), float((dy[iu] != 0).sum())
    return s / np.sqrt(nx * ny) if nx and ny else float("nan")


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of average ranks; nan when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / den if den else float("nan")


def bootstrap_ci(x: Sequence[float], y: Sequence[float], stat: Callable[[Any, Any], float], n: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(x, y)` over resampled pairs (nan-resamples dropped)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if n <= 0 or len(a) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        v = stat(a[idx], b[idx])
        if not np.isnan(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def correlation(x: Sequence[float], y: Sequence[float], bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """τ and ρ with their bootstrap intervals, and M."""
    tau_lo, tau_hi = bootstrap_ci(x, y, kendall_tau, bootstrap, seed)
    rho_lo, rho_hi = bootstrap_ci(x, y, spearman_rho, bootstrap, seed + 1)
    return {"m": len(x), "kendall_tau": kendall_tau(x, y), "kendall_tau_ci": [tau_lo, tau_hi],
            "spearman_rho": spearman_rho(x, y), "spearman_rho_ci": [rho_lo, rho_hi]}


def ground_truth(records: list[dict[str, Any]], arm: str) -> dict[int, float]:
    """Genotype index → stand-alone validation top-1 of `arm`'s trainings (the mean over seeds where
    an arm with `seeds:` trained a genotype several times)."""
    per_index: dict[int, list[float]] = {}
    for r in records:
        if r["arm"] == arm and r["kind"] == "train" and r.get("val_top1") is not None:
            per_index.setdefault(int(r["index"]), []).append(float(r["val_top1"]))
    return {i: float(np.mean(v)) for i, v in per_index.items()}


def fidelity_table(scores: dict[str, list[dict[str, Any]]], truth: dict[int, float],
                   bootstrap: int = 1000) -> list[dict[str, Any]]:
    """One row per estimator (and per score part, e.g. CP-NAS' acc_child): the correlation of each
    seed's scores with `truth` (genotype index → stand-alone validation top-1), and of the scores
    averaged over seeds. `scores`: estimator → score records of its seeds."""
    rows = []
    for est, recs in scores.items():
        parts = sorted({k for r in recs for s in r["scores"] for k in s if k not in ("index",)})
        for part in ["score"] + [p for p in parts if p != "score"]:
            per_seed = []
            means: dict[int, list[float]] = {}
            for r in recs:
                pairs = [(s[part], truth[s["index"]]) for s in r["scores"] if s["index"] in truth and part in s]
                if len(pairs) >= 3:
                    c = correlation([p[0] for p in pairs], [p[1] for p in pairs], bootstrap, seed=r["seed"])
                    per_seed.append({"seed": r["seed"], **c})
                for s in r["scores"]:
                    if s["index"] in truth and part in s:
                        means.setdefault(s["index"], []).append(s[part])
            idx = sorted(means)
            if len(idx) < 3:
                continue
            pooled = correlation([float(np.mean(means[i])) for i in idx], [truth[i] for i in idx], bootstrap)
            rows.append({"estimator": est, "part": part, "seeds": [p["seed"] for p in per_seed],
                         "per_seed": per_seed, "mean_over_seeds": pooled})
    return rows


# ---------------------------------------------------------------------------- scoring worker

def score_genotypes(search_dir: Path, genotypes: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Rebuild a search from its last checkpoint (same data split, same state) and score each
    genotype with the strategy's estimator."""
    import torch

    from bitnas.errors import BitnasError
    from bitnas.search import strategies  # noqa: F401 - registers every strategy
    from bitnas.search.config import SearchConfig
    from bitnas.search.runner import make_context
    from bitnas.search.strategy import STRATEGIES
    from bitnas.space.genotypes import Genotype
    from bitnas.utils import load_checkpoint, seed_everything, set_rng_state

    ck = load_checkpoint(search_dir / "last.pt")
    if ck.get("kind") != "search":
        raise BitnasError(f"{search_dir / 'last.pt'}: not a search checkpoint")
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    cfg = SearchConfig(**{k: v for k, v in ck["config"].items() if k in known})
    cfg = dataclasses.replace(cfg, out=str(out_dir), progress="off")
    torch.set_num_threads(cfg.threads or 1)
    seed_everything(cfg.seed)
    ctx = make_context(cfg)
    strat = STRATEGIES.get(cfg.strategy)(ctx)
    strat.load_state_dict(ck["strategy"])
    set_rng_state(ck["rng"])
    scores = []
    for i, g in enumerate(genotypes):
        est = strat.estimate(Genotype.from_dict(g, f"genotype {i}"))
        scores.append({"index": i, **{k: float(v) for k, v in est.items()}})
    return {"estimator": strat.name, "strategy": strat.name, "search": str(search_dir), "scores": scores}


def main(argv: list[str] | None = None) -> int:
    import json

    from bitnas.errors import BitnasError
    from bitnas.run import setup_logging
    from bitnas.utils import atomic_write_json

    p = argparse.ArgumentParser(prog="python -m bitnas.study.fidelity",
                                description="Score genotypes with a search's own estimator (a study's score trial).")
    p.add_argument("search_dir")
    p.add_argument("genotypes", help="JSON list of genotypes")
    p.add_argument("--out", required=True, help="scores JSON file to write")
    a = p.parse_args(argv)
    setup_logging()
    try:
        genotypes = json.loads(Path(a.genotypes).read_text(encoding="utf-8"))
        if not isinstance(genotypes, list):
            raise BitnasError(f"{a.genotypes}: expected a JSON list of genotypes")
        out = Path(a.out)
        res = score_genotypes(Path(a.search_dir), genotypes, out.parent)
        atomic_write_json(out, res)
    except (BitnasError, OSError, json.JSONDecodeError) as e:
        print(f"bitnas: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
