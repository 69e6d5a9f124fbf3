"""What a study checks before its folder exists, and the records a rerun reads back.

`check_trials` runs, once per arm and kind, every check the trial's own `bitnas search` /
`bitnas train` process makes before its first step (config, device, dataset, split sizes, the
network's sizes): a study whose trials would all fail is refused before `study.yaml` is written,
not one failed trial at a time. `read_records` reads `trials.jsonl` with the one rule of every
JSON-lines file bitnas reads (`bitnas.common.files.jsonl_records`: a torn last line is dropped with a warning,
any other bad line refused) and refuses a record whose fields a report could not use.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable

from bitnas.errors import BitnasError, ConfigError, brief
from bitnas.study.records import FIGURES, WALL_CLOCK, random_genotype_for
from bitnas.study.spec import Arm, StudySpec, Trial

PERCENT = ("val_top1", "test_top1", "test_top5")


def check_trials(spec: StudySpec, fidelity_only: bool = False) -> None:
    """Refuse (one line naming the trial) a study one of whose trials would refuse to start."""
    from bitnas.data import load_dataset

    load = functools.lru_cache(maxsize=None)(load_dataset)  # each dataset is read once for every check
    seen: set[tuple[str, str]] = set()
    for t in spec.trials(fidelity_only):
        if t.kind in ("score", "zero_cost") or (t.arm, t.kind) in seen:
            continue
        seen.add((t.arm, t.kind))
        arm = spec.arm(t.arm)
        try:
            if t.kind == "search":
                _check_search(spec, arm, t, load)
            else:
                _check_train(spec, arm, t, load)
        except BitnasError as e:
            raise ConfigError(f"study {spec.name}: trial {t.id} would fail: {e}") from None


def _check_search(spec: StudySpec, arm: Arm, t: Trial, load: Callable[..., Any]) -> None:
    from bitnas.config import update_config
    from bitnas.search import strategies  # noqa: F401 - registers every strategy
    from bitnas.search.config import SearchConfig
    from bitnas.search.runner import load_search_data
    from bitnas.search.strategy import STRATEGIES, check_strategy_keys
    from bitnas.common.distributed import resolve_device

    cfg = update_config(SearchConfig(strategy=arm.strategy),
                        {**spec.search, **arm.search, "data": spec.data, "seed": t.seed}, "search")
    cfg.validate()
    strategy = STRATEGIES.get(cfg.strategy)
    check_strategy_keys(cfg, strategy)
    strategy.check_config(cfg)
    resolve_device(cfg.device)
    load_search_data(cfg, 1, load=load)


def _check_train(spec: StudySpec, arm: Arm, t: Trial, load: Callable[..., Any]) -> None:
    from bitnas.config import update_config
    from bitnas.space.genotypes import load_genotype
    from bitnas.train.config import TrainConfig
    from bitnas.train.data import load_train_data
    from bitnas.train.job import check_network
    from bitnas.common.distributed import resolve_device

    values: dict[str, Any] = {**spec.protocol, **arm.train, "data": spec.data, "seed": t.seed}
    genotype = None
    if arm.kind == "genotype":
        values["genotype"] = arm.genotype
        genotype = load_genotype(arm.genotype)
    elif arm.kind == "random_genotypes":
        genotype = random_genotype_for(arm, max(t.index, 0))
    elif arm.kind == "network":
        values["network"] = arm.network
    cfg = update_config(TrainConfig(), values, "protocol")
    cfg.validate()
    resolve_device(cfg.device)
    check_network(cfg, load_train_data(cfg, 1, load=load), genotype)


# ---------------------------------------------------------------------------- records

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_record(rec: dict[str, Any], trial: Trial | None, where: str) -> None:
    """Refuse a record lacking a field of its kind or holding one of the wrong type; `trial` is
    the spec's trial of the record's id (None: a trial the spec no longer has, kept as is)."""
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}; fix or delete that line (its trial then runs again)")

    for key in ("id", "arm", "kind", "seed"):
        if key not in rec:
            raise bad(f"record lacks '{key}'")
    if not isinstance(rec["id"], str):
        raise bad(f"'id' must be a text, got {brief(rec['id'])}")
    if trial is None:
        return
    for key, want in (("arm", trial.arm), ("kind", trial.kind), ("seed", trial.seed)):
        if rec[key] != want or type(rec[key]) is not type(want):
            raise bad(f"'{key}' must be {want!r} for trial {trial.id}, got {brief(rec[key])}")
    required = ("test_top1", "ops", "params_1bit", "params_32bit") if trial.kind == "train" else ()
    for key in FIGURES + WALL_CLOCK:
        if key in required and key not in rec:
            raise bad(f"record lacks '{key}'")
        v = rec.get(key)
        top = 100 if key in PERCENT else math.inf
        if (key in required or v is not None) and not (_number(v) and 0 <= v <= top):
            span = "in 0..100" if key in PERCENT else "≥ 0"
            raise bad(f"'{key}' must be a number {span}{'' if key in required else ' or null'}, got {brief(v)}")
    if trial.index >= 0 and rec.get("index") != trial.index:
        raise bad(f"'index' must be {trial.index} for trial {trial.id}, got {brief(rec.get('index'))}")
    ops = rec.get("parametric_ops")
    if ops is not None and not (isinstance(ops, dict) and _number(ops.get("normal"))):
        raise bad(f"'parametric_ops' must map 'normal' to a number, got {brief(ops)}")
    if trial.kind == "search" and not isinstance(rec.get("genotype"), dict):
        raise bad(f"'genotype' must be a genotype mapping, got {brief(rec.get('genotype'))}")
    if trial.kind in ("score", "zero_cost"):
        scores = rec.get("scores")
        if not isinstance(scores, list) or not all(
                isinstance(s, dict) and isinstance(s.get("index"), int) and not isinstance(s["index"], bool)
                and all(_number(v) for k, v in s.items() if k != "index") for s in scores):
            raise bad(f"'scores' must be a list of {{index: N, <score>: number}}, got {brief(scores)}")
    if trial.kind == "zero_cost":
        names = rec.get("estimators")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)
                and all(n in s for s in rec["scores"] for n in names)):
            raise bad(f"'estimators' must list the score names every score holds, got {brief(names)}")


def read_records(path: Path, spec: StudySpec) -> dict[str, dict[str, Any]]:
    """Finished trials of `spec` by id (records of trials the spec no longer has are left out)."""
    from bitnas.common.files import jsonl_records

    trials = {t.id: t for t in spec.trials()}
    out: dict[str, dict[str, Any]] = {}
    for n, rec in jsonl_records(path):
        check_record(rec, trials.get(rec.get("id")) if isinstance(rec.get("id"), str) else None, f"{path}: line {n}")
        if rec["id"] in trials:
            out[rec["id"]] = rec
    return out
