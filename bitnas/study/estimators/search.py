"""Search-based estimators: each search's own score of a genotype in its trained state
(`SearchStrategy.estimate`: the CP-NAS indicator z of the genotype's path and its parts A_C, A_P,
the α-based score of DARTS / PC-DARTS / UBNAS, the weight-sharing accuracy of random search, the
zero_cost strategy's estimator).

`python -m bitnas.study.estimators.search SEARCH_DIR GENOTYPES.json --out SCORES.json` scores a
list of genotypes with a finished (or interrupted) search's last checkpoint: a study's score trial.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from bitnas.errors import BitnasError
from bitnas.search import strategies  # noqa: F401 - registers every strategy
from bitnas.search.config import SearchConfig
from bitnas.search.runner import make_context
from bitnas.search.strategy import STRATEGIES
from bitnas.space.genotypes import Genotype
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import atomic_write_json
from bitnas.common.rng import seed_everything, set_rng_state


def score_genotypes(search_dir: Path, genotypes: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Rebuild a search from its last checkpoint (same data split, same state) and score each
    genotype with the strategy's estimator."""
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
    from bitnas.run import setup_logging

    p = argparse.ArgumentParser(prog="python -m bitnas.study.estimators.search",
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
