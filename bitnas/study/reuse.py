"""Trainings shared between studies: `bitnas study … --reuse OTHER` takes a finished training of
another study folder instead of running it again when both would run the very same training.

"The same training" means the same `bitnas train` settings (protocol, the arm's `train:` keys,
data, seed) and the same architecture (genotype mapping or hand-designed network); only the
trial's folder may differ. Only trainings of fixed architectures are shared (random, published
and hand-designed ones): a search arm's training depends on its own search. A shared record keeps
its figures and its config (as it ran there) and says where it came from (`reused_from`); the
study's table counts them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bitnas.common.files import jsonl_records
from bitnas.errors import ConfigError
from bitnas.study.records import run_settings, random_genotype_for
from bitnas.study.spec import StudySpec, Trial

REUSABLE = ("random_genotypes", "genotype", "network")


def _key(config: dict[str, Any], genotype: Any) -> str:
    """What makes two trainings the same: their settings but the folder, and the architecture
    (a random draw's genotype file differs by folder, so the genotype mapping stands for it)."""
    settings = {k: v for k, v in config.items() if k not in ("out", "genotype")}
    return json.dumps([settings, genotype], sort_keys=True)


def planned_key(spec: StudySpec, t: Trial) -> str | None:
    """The key of trial `t`'s training, or None when it cannot be shared."""
    arm = spec.arm(t.arm)
    if t.kind != "train" or arm.kind not in REUSABLE:
        return None
    cfg: dict[str, Any] = {**spec.protocol, **arm.train, **run_settings(spec, t)}
    genotype = None
    if arm.kind == "random_genotypes":
        genotype = random_genotype_for(arm, t.index).to_dict()
    elif arm.kind == "genotype":
        from bitnas.space.genotypes import load_genotype

        genotype = load_genotype(arm.genotype).to_dict()
    else:
        cfg["network"] = arm.network
    return _key(cfg, genotype)


def record_key(rec: dict[str, Any]) -> str | None:
    """The key of a finished training's record (None for other kinds or a record without config)."""
    cfg = rec.get("config")
    if rec.get("kind") != "train" or not isinstance(cfg, dict):
        return None
    return _key(cfg, rec.get("genotype") if "genotype" in cfg else None)


def shared_records(spec: StudySpec, trials: list[Trial], done: dict[str, dict[str, Any]], sources: list[Path],
                   out: Path) -> dict[str, dict[str, Any]]:
    """Records for the trials of `trials` not in `done` whose training a study folder of `sources`
    has finished (the first source that has it wins), rewritten as this study's trials."""
    offers: dict[str, tuple[str, dict[str, Any]]] = {}
    for src in sources:
        if src.resolve() == out.resolve():
            raise ConfigError(f"--reuse {src}: is the study's own folder (its trainings are resumed anyway)")
        path = src / "trials.jsonl"
        if not path.is_file():
            raise ConfigError(f"--reuse {src}: not a study folder (no trials.jsonl)")
        name = src.name
        for _, rec in jsonl_records(path):
            if rec.get("reused_from"):
                continue  # take a training from where it ran, never second hand
            key = record_key(rec)
            if key is not None and key not in offers:
                offers[key] = (f"{name}/{rec.get('id')}", rec)
    shared: dict[str, dict[str, Any]] = {}
    for t in trials:
        key = planned_key(spec, t) if t.id not in done else None
        if key is None or key not in offers:
            continue
        origin, rec = offers[key]
        copy = {**rec, "id": t.id, "arm": t.arm, "kind": "train", "seed": t.seed, "reused_from": origin}
        copy.pop("index", None)
        if t.index >= 0:
            copy["index"] = t.index
        shared[t.id] = copy
    return shared
