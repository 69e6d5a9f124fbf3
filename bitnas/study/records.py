"""Trial folders, trial configs and the record each finished trial leaves in trials.jsonl.

Every record carries `id`, `arm`, `kind` (search / train / score / zero_cost), `seed`, `config`, `split` (which
split every figure comes from), `val_top1`, `test_top1`, `test_top5`, `ops`, `params_1bit`,
`params_32bit`, `bops`, `flops`, `search_seconds`, `search_images` — null where a figure does
not apply to the kind (a search has no test figure). Wall-clock fields: `search_seconds`,
`train_seconds`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bitnas.common.files import read_json_object
from bitnas.data.loader import mix_seed
from bitnas.study.spec import Arm, StudySpec, Trial

WALL_CLOCK = ("search_seconds", "train_seconds")
FIGURES = ("val_top1", "test_top1", "test_top5", "ops", "params_1bit", "params_32bit", "bops", "flops",
           "search_seconds", "search_images")


class TrialFiles:
    """Paths inside a study folder (trial folders are trials/<id>/)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, t: Trial) -> Path:
        return self.root / "trials" / t.id

    def log(self, t: Trial) -> Path:
        return self.dir(t) / "trial.log"

    def rel(self, p: Path) -> str:
        """`p` relative to the study folder (trials run there; the folder can move between runs)."""
        return str(p.relative_to(self.root))

    def fidelity_genotypes(self) -> Path:
        return self.root / "trials" / "fidelity" / "genotypes.json"

    def last_error(self, t: Trial) -> str:
        """The `bitnas: error:` line (or last line) of a failed trial's log."""
        p = self.log(t)
        if not p.is_file():
            return ""
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("bitnas: error:")]
        return (errors or lines or [""])[-1][:300]

    def trial_config(self, spec: StudySpec, t: Trial) -> dict[str, Any]:
        """The `bitnas search` / `bitnas train` config of a trial (its trial.yaml)."""
        arm = spec.arm(t.arm)
        run = {**run_settings(spec, t), "out": self.rel(self.dir(t))}
        if t.kind == "search":
            return {"strategy": arm.strategy, **spec.search, **arm.search, **run}
        cfg: dict[str, Any] = {**spec.protocol, **arm.train, **run}
        if t.kind == "zero_cost":  # the ground-truth arm's training at this seed; each genotype is scored
            return cfg
        if arm.kind == "strategy":
            cfg["genotype"] = self.rel(self.dir(Trial(f"{arm.name}/s{t.seed}/search", "search", arm.name, t.seed))
                                       / "genotype.json")
        elif arm.kind == "random_genotypes":
            path = self.dir(t) / "genotype_drawn.json"
            if not path.is_file():
                from bitnas.common.files import atomic_write_text

                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, random_genotype_for(arm, t.index).to_json() + "\n")
            cfg["genotype"] = self.rel(path)
        elif arm.kind == "genotype":
            cfg["genotype"] = arm.genotype
        else:
            cfg["network"] = arm.network
        return cfg


def run_settings(spec: StudySpec, t: Trial) -> dict[str, Any]:
    """The settings every trial process gets besides its arm's: data, seed, one thread, no bar."""
    return {"data": spec.data, "seed": t.seed, "threads": 1, "progress": "off"}


def random_genotype_for(arm: Arm, index: int):
    """Draw `index` of a random_genotypes arm: uniform over its space, a pure function of
    (space, index), so every study (and the fidelity set) draws the same genotypes."""
    from bitnas.space.genotypes import random_genotype
    from bitnas.space.spaces import get_space

    space = get_space(arm.space)
    gen = torch.Generator().manual_seed(mix_seed(0x5EED, index, *space.name.encode()))
    return random_genotype(space.ops, space.zero_op, gen)


def _blank(t: Trial, spec: StudySpec, files: TrialFiles) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": t.id, "arm": t.arm, "kind": t.kind, "seed": t.seed}
    if t.index >= 0:
        rec["index"] = t.index
    rec.update({k: None for k in FIGURES})
    return rec


def build_record(spec: StudySpec, t: Trial, files: TrialFiles, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The record of finished trial `t` (`done`: records of finished trials, for its dependencies)."""
    rec = _blank(t, spec, files)
    d = files.dir(t)
    if t.kind == "search":
        res = read_json_object(d / "genotype.json")
        from bitnas.space.genotypes import Genotype

        g = Genotype.from_dict(res["genotype"])
        rec.update({
            "config": files.trial_config(spec, t), "strategy": res.get("strategy"), "space": res.get("space"),
            "genotype": res["genotype"], "parametric_ops": g.parametric_ops(), "stop_reason": res.get("stop_reason"),
            "search_seconds": res.get("search_seconds"), "search_images": res.get("images_processed"),
            "machine": res.get("machine"),
            "split": {"search": "train_subset of the training images, split into weight / architecture halves "
                                f"(val_fraction {spec.search.get('val_fraction', 0.5)}); no test image is read"},
        })
        return rec
    if t.kind == "score":
        res = read_json_object(d / "scores.json")
        rec.update({"estimator": res["estimator"], "strategy": res.get("strategy"), "scores": res["scores"],
                    "split": {"scores": "the search's own validation half (carved from training images)"}})
        return rec
    if t.kind == "zero_cost":
        res = read_json_object(d / "scores.json")
        rec.update({"config": files.trial_config(spec, t), "estimators": res["estimators"], "scores": res["scores"],
                    "split": {"scores": f"{res['batches']} batches of {res['batch_size']} images of the protocol's "
                                        "training split (no validation or test image), networks at initialisation"}})
        return rec
    res = read_json_object(d / "result.json")
    rec.update(_train_figures(d, res))
    rec["config"] = files.trial_config(spec, t)
    if t.deps:
        search = done[t.deps[0]]
        rec["search_seconds"], rec["search_images"] = search["search_seconds"], search["search_images"]
    elif spec.arm(t.arm).kind != "strategy":
        rec["search_seconds"], rec["search_images"] = 0.0, 0
    return rec


def _train_figures(d: Path, res: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, cost and architecture of a finished training (its result.json and best.pt)."""
    from bitnas.nets import network_from_spec
    from bitnas.summary import summarize
    from bitnas.common.checkpoint import load_checkpoint

    ck = load_checkpoint(d / "best.pt")
    arch = ck["arch"]
    net = arch["network"]
    size = int(ck.get("image_size") or 32)
    s = summarize(network_from_spec(arch), (int(net["in_channels"]), size, size))
    out: dict[str, Any] = {
        "val_top1": res.get("val_top1"), "test_top1": res["test_top1"], "test_top5": res.get("test_top5"),
        "selected_epoch": res.get("selected_epoch"), "ops": s.ops, "params_1bit": s.params_1bit,
        "params_32bit": s.params_32bit, "bops": s.bops, "flops": s.flops, "memory_bytes": s.memory_bytes,
        "train_seconds": res.get("seconds"), "machine": res.get("machine"),
        "split": {"val_top1": "validation split carved from the training images (selects the epoch)",
                  "test_top1": "test split, evaluated once on the selected epoch", **(res.get("splits") or {})},
    }
    if arch.get("genotype") is not None:
        from bitnas.space.genotypes import Genotype

        out["genotype"] = arch["genotype"]
        out["parametric_ops"] = Genotype.from_dict(arch["genotype"]).parametric_ops()
    else:
        out["network"] = net.get("blocks")
    out["structure"] = net.get("structure")
    return out
