"""`bitnas search`: run a search strategy and write genotype.json."""
from __future__ import annotations

import argparse

from bitnas.common.launch import add_nproc_arg, maybe_launch
from bitnas.config import add_config_args, config_from_args
from bitnas.search.config import SearchConfig


def cmd_search(args: argparse.Namespace) -> int:
    from bitnas.search import strategies  # noqa: F401 - registers every strategy
    from bitnas.search.runner import run_search
    from bitnas.search.strategy import STRATEGIES

    cfg = config_from_args(SearchConfig, args)
    STRATEGIES.canonical(cfg.strategy)
    launched = maybe_launch(args)
    if launched is not None:
        return launched
    run_search(cfg, resume=args.resume)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a binary architecture (cpnas, ubnas, pcdarts, darts, random, zero_cost)",
                       description="Search an architecture; writes genotype.json, metrics.jsonl, config.yaml and "
                                   "checkpoints to the run directory (--out).")
    add_config_args(p, SearchConfig)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_nproc_arg(p)
    p.set_defaults(func=cmd_search)
