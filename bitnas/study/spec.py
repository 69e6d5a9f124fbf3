"""A study: arms × seeds judged by one training protocol, read from YAML and checked before any work.

    name: my_study
    data: fashion-mnist
    seeds: [0, 1, 2]
    workers: 0                 # local processes (0 = the cores), each single-threaded
    executor: local            # or ray (bitnas[ray]); ray_address: "" = start/join a local instance
    search: {train_subset: 2000, init_channels: 8, layers: 5}   # keys every strategy reads
    protocol: {init_channels: 8, layers: 3, epochs: 2}          # `bitnas train` keys for every genotype
    arms:
      - {name: cpnas, strategy: cpnas, search: {rounds: 1}}     # a search per seed, then its training
      - {name: random_genotypes, random_genotypes: 12, space: cpnas}   # uniform draws, no search
      - {name: noise, random_genotypes: 4, seeds: [0, 1, 2]}     # each draw trained under every listed seed
      - {name: DARTS_V2, genotype: DARTS_V2}                     # a registered or pasted genotype
      - {name: bireal, network: bireal}                          # a hand-designed network
      - {name: DARTS_V2-kd, genotype: DARTS_V2, train: {kd_weight: 1.0}}  # protocol overrides
    fidelity: {genotypes: random_genotypes, estimators: [cpnas, random], bootstrap: 1000,
               zero_cost: [params, synflow, grad_norm, naswot, zico]}   # scored at initialisation

Every search and training is a trial with its own run directory; `bitnas.study.runner` runs them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bitnas.common.safe_yaml import load_yaml, read_yaml
from bitnas.config import find_recipe, update_config
from bitnas.errors import ConfigError, brief
from bitnas.registry import did_you_mean

TOP_KEYS = ("command", "description", "name", "data", "seeds", "workers", "executor", "ray_address", "search",
            "protocol", "arms", "fidelity", "control")
EXECUTORS = ("local", "ray")
# Set per trial by the study; a protocol or search block may not set them.
TRIAL_KEYS = frozenset({"out", "seed", "data", "resume", "genotype", "network", "strategy", "threads", "progress"})
ARM_KINDS = ("strategy", "random_genotypes", "genotype", "network")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
ZERO_COST_TRIAL = "_zero_cost"  # trial folder of the zero-cost scorings: no arm name can start with '_'


@dataclass(frozen=True)
class Arm:
    """One arm: a search strategy, random genotypes, a fixed genotype, or a hand-designed network."""

    name: str
    kind: str
    strategy: str = ""
    search: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    space: str = ""
    genotype: str = ""
    network: str = ""
    seeds: tuple[int, ...] = ()  # random_genotypes: train every draw under each of these seeds


@dataclass(frozen=True)
class Fidelity:
    """Rank fidelity: the genotypes of `genotypes` (a random_genotypes arm) trained stand-alone are
    the ground truth; each search arm in `estimators` scores them with its own estimator, and each
    zero-cost estimator in `zero_cost` on their protocol networks at initialisation (one trial per
    seed, `zero_cost_batches` training batches; 0 = as few as the estimators need)."""

    genotypes: str
    estimators: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    bootstrap: int = 1000
    zero_cost: tuple[str, ...] = ()
    zero_cost_batches: int = 0


@dataclass(frozen=True)
class Trial:
    """A unit of the study: one search, one training, one scoring by a search (`score`) or the
    zero-cost scoring of the fidelity genotypes at one seed (`zero_cost`), in `trials/<id>/`."""

    id: str
    kind: str
    arm: str
    seed: int
    deps: tuple[str, ...] = ()
    index: int = -1


@dataclass
class StudySpec:
    name: str
    data: str
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    search: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    workers: int = 0
    executor: str = "local"
    ray_address: str = ""
    fidelity: Fidelity | None = None
    description: str = ""
    control: str = ""  # the random_genotypes arm every other arm is compared with ("" = none)

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise ConfigError(f"study: no arm named '{name}'{did_you_mean(name, [a.name for a in self.arms])}")

    def trials(self, fidelity_only: bool = False) -> list[Trial]:
        """Every trial in canonical order (arms as listed, seeds as listed); with `fidelity_only`,
        just what the fidelity block needs."""
        need_train = None
        if fidelity_only:
            if self.fidelity is None:
                raise ConfigError("study: --fidelity needs a fidelity: block")
            need_train = {self.fidelity.genotypes}
        out: list[Trial] = []
        for a in self.arms:
            if a.kind == "strategy":
                estimator = self.fidelity is not None and a.name in self.fidelity.estimators
                if fidelity_only and not estimator:
                    continue
                seeds = (self.fidelity.seeds or self.seeds) if fidelity_only else self.seeds  # type: ignore[union-attr]
                for s in seeds:
                    search = Trial(f"{a.name}/s{s}/search", "search", a.name, s)
                    out.append(search)
                    if not fidelity_only:
                        out.append(Trial(f"{a.name}/s{s}/train", "train", a.name, s, (search.id,)))
            elif a.kind == "random_genotypes":
                if need_train is not None and a.name not in need_train:
                    continue
                for i in range(a.count):
                    if a.seeds:
                        out += [Trial(f"{a.name}/g{i:02d}/s{s}/train", "train", a.name, s, index=i) for s in a.seeds]
                    else:
                        out.append(Trial(f"{a.name}/g{i:02d}/train", "train", a.name,
                                         self.seeds[i % len(self.seeds)], index=i))
            elif not fidelity_only:
                out += [Trial(f"{a.name}/s{s}/train", "train", a.name, s) for s in self.seeds]
        if self.fidelity is not None:
            f = self.fidelity
            for est in f.estimators:
                for s in f.seeds or self.seeds:
                    out.append(Trial(f"fidelity/{est}/s{s}/score", "score", est, s, (f"{est}/s{s}/search",)))
            if f.zero_cost:
                out += [Trial(f"fidelity/{ZERO_COST_TRIAL}/s{s}/score", "zero_cost", f.genotypes, s)
                        for s in f.seeds or self.seeds]
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "description": self.description, "data": self.data,
                             "seeds": list(self.seeds), "workers": self.workers, "executor": self.executor,
                             "ray_address": self.ray_address, "search": dict(self.search),
                             "protocol": dict(self.protocol), "arms": [_arm_dict(a) for a in self.arms]}
        if self.fidelity is not None:
            f = self.fidelity
            d["fidelity"] = {"genotypes": f.genotypes, "estimators": list(f.estimators), "seeds": list(f.seeds),
                             "bootstrap": f.bootstrap}
            if f.zero_cost:
                d["fidelity"].update(zero_cost=list(f.zero_cost), zero_cost_batches=f.zero_cost_batches)
        if self.control:
            d["control"] = self.control
        return d


def _arm_dict(a: Arm) -> dict[str, Any]:
    d: dict[str, Any] = {"name": a.name}
    if a.kind == "strategy":
        d["strategy"] = a.strategy
        if a.search:
            d["search"] = dict(a.search)
    elif a.kind == "random_genotypes":
        d["random_genotypes"], d["space"] = a.count, a.space
        if a.seeds:
            d["seeds"] = list(a.seeds)
    elif a.kind == "genotype":
        d["genotype"] = a.genotype
    else:
        d["network"] = a.network
    if a.train:
        d["train"] = dict(a.train)
    return d


# ---------------------------------------------------------------------------- loading

def load_spec(source: str, overrides: list[str] | None = None) -> StudySpec:
    """Read a study YAML file (or a shipped `study_*` recipe), apply KEY=VALUE overrides
    (top-level keys, or `protocol.KEY` / `search.KEY`), and check everything."""
    path = find_recipe(source, "study")
    data = read_yaml(path, "study") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study must be a mapping of key: value")
    if data.get("command", "study") != "study":
        raise ConfigError(f"{path}: a recipe for `bitnas {brief(data.get('command'))}`, not a study")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}': expected key=value")
        head, _, sub = key.strip().partition(".")
        parsed = load_yaml(value, f"override '{item[:80]}'") if value.strip() else ""
        if sub:
            if head not in ("protocol", "search"):
                raise ConfigError(f"override '{item}': only protocol.KEY and search.KEY take a dotted key")
            block = data.get(head) or {}
            if not isinstance(block, dict):
                raise ConfigError(f"{path}: {head} must be a mapping of key: value")
            data[head] = {**block, sub: parsed}
        else:
            data[head] = parsed
    return parse_spec(data, str(path))


def parse_spec(data: dict[str, Any], source: str = "study") -> StudySpec:
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], list(TOP_KEYS))}")
    name = str(data.get("name") or Path(source).stem)
    check_name(name, f"{source}: name")
    seeds = data.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            and 0 <= s < 2 ** 31 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{source}: seeds must be a non-empty list of distinct integers in [0, 2^31), "
                          f"got {brief(seeds)}")
    workers = data.get("workers", 0)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= 1024:
        raise ConfigError(f"{source}: workers must be an integer in 0..1024 (0 = the cores), got {brief(workers)}")
    executor = str(data.get("executor", "local"))
    if executor not in EXECUTORS:
        raise ConfigError(f"{source}: executor must be one of {', '.join(EXECUTORS)}, got {brief(executor)}")
    if not isinstance(data.get("ray_address", ""), (str, type(None))):
        raise ConfigError(f"{source}: ray_address must be HOST:PORT text, got {brief(data['ray_address'])}")
    dataset = str(data.get("data", "fashion-mnist"))
    search = _block(data.get("search"), "search", source)
    protocol = _block(data.get("protocol"), "protocol", source)
    _check_protocol(protocol, {}, source)
    _check_common_search(search, source)
    arms_raw = data.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise ConfigError(f"{source}: arms must be a non-empty list")
    arms = tuple(_parse_arm(a, i, search, protocol, tuple(seeds), source) for i, a in enumerate(arms_raw))
    names = [a.name for a in arms]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{source}: arm name '{sorted(dup)[0]}' used twice")
    spec = StudySpec(name=name, data=dataset, seeds=tuple(seeds), arms=arms, search=search, protocol=protocol,
                     workers=workers, executor=executor, ray_address=str(data.get("ray_address") or ""),
                     description=str(data.get("description") or "").strip())
    if data.get("fidelity"):
        spec.fidelity = _parse_fidelity(data["fidelity"], spec, source)
    spec.control = _parse_control(data.get("control"), spec, source)
    return spec


def check_name(name: str, where: str) -> None:
    """A study or arm name names a folder: letters, digits and _.+-, at most 100 characters."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where} {brief(name)} must be letters, digits and _.+-, at most 100 characters "
                          "(it names a folder)")


def _parse_control(raw: Any, spec: StudySpec, source: str) -> str:
    """The control arm: given, else the fidelity ground truth, else the first random_genotypes arm."""
    if raw is None:
        if spec.fidelity is not None:
            return spec.fidelity.genotypes
        return next((a.name for a in spec.arms if a.kind == "random_genotypes"), "")
    arm = spec.arm(str(raw))
    if arm.kind != "random_genotypes":
        raise ConfigError(f"{source}: control must name a random_genotypes arm, '{arm.name}' is a {arm.kind} arm")
    return arm.name


def _block(value: Any, what: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {what} must be a mapping of key: value")
    bad = sorted(TRIAL_KEYS & set(value))
    if bad:
        raise ConfigError(f"{source}: {what}: '{bad[0]}' is set per trial by the study and cannot be given here")
    return dict(value)


def _check_protocol(protocol: dict[str, Any], extra: dict[str, Any], source: str) -> None:
    from bitnas.train.config import TrainConfig

    cfg = update_config(TrainConfig(), {**protocol, **extra}, f"{source}: protocol")
    cfg.validate()


def _check_common_search(search: dict[str, Any], source: str) -> None:
    from bitnas.search.config import SearchConfig
    from bitnas.search.strategy import COMMON_KEYS

    update_config(SearchConfig(), search, f"{source}: search")
    own = sorted(set(search) - COMMON_KEYS)
    if own:
        raise ConfigError(f"{source}: search: '{own[0]}' is read by some strategies only; give it in an arm's "
                          "search: block")


def _parse_arm(raw: Any, i: int, search: dict[str, Any], protocol: dict[str, Any], study_seeds: tuple[int, ...],
               source: str) -> Arm:
    where = f"{source}: arms[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an arm is a mapping (name: ..., strategy: ... | random_genotypes: N | "
                          "genotype: ... | network: ...)")
    allowed = {"name", "strategy", "search", "train", "random_genotypes", "space", "genotype", "network", "seeds"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], sorted(allowed))}")
    kinds = [k for k in ARM_KINDS if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(ARM_KINDS)}")
    kind = kinds[0]
    name = str(raw.get("name") or raw[kind])
    check_name(name, f"{where}: name")
    train = _block(raw.get("train"), f"arms[{i}].train", source)
    _check_protocol(protocol, train, f"{where}")
    if kind != "strategy" and "search" in raw:
        raise ConfigError(f"{where}: search: belongs to strategy arms")
    if kind != "random_genotypes" and "space" in raw:
        raise ConfigError(f"{where}: space: belongs to random_genotypes arms (a strategy arm sets it in search:)")
    if kind != "random_genotypes" and "seeds" in raw:
        raise ConfigError(f"{where}: seeds: belongs to random_genotypes arms (other arms run every study seed)")
    if kind == "strategy":
        from bitnas.search import strategies  # noqa: F401 - registers every strategy
        from bitnas.search.config import SearchConfig
        from bitnas.search.strategy import STRATEGIES, check_strategy_keys

        strategy = STRATEGIES.canonical(str(raw["strategy"]))
        own = _block(raw.get("search"), f"arms[{i}].search", source)
        cfg = update_config(SearchConfig(strategy=strategy), {**search, **own}, where)
        check_strategy_keys(cfg, STRATEGIES.get(strategy))
        return Arm(name, "strategy", strategy=strategy, search=own, train=train)
    if kind == "random_genotypes":
        from bitnas.space.spaces import SPACES

        count = raw["random_genotypes"]
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 10_000:
            raise ConfigError(f"{where}: random_genotypes must be a count in 1..10000, got {brief(count)}")
        space = SPACES.canonical(str(raw.get("space") or "cpnas"))
        seeds = raw.get("seeds") or []
        if (not isinstance(seeds, list) or any(isinstance(s, bool) or s not in study_seeds for s in seeds)
                or len(set(seeds)) != len(seeds)):
            raise ConfigError(f"{where}: seeds must be a list of distinct study seeds {list(study_seeds)}, "
                              f"got {str(seeds)[:80]}")
        return Arm(name, "random_genotypes", count=count, space=space, train=train, seeds=tuple(seeds))
    if kind == "genotype":
        from bitnas.space.genotypes import load_genotype

        load_genotype(str(raw["genotype"]))
        return Arm(name, "genotype", genotype=str(raw["genotype"]), train=train)
    from bitnas.nets.blocks import BLOCKS

    return Arm(name, "network", network=BLOCKS.canonical(str(raw["network"])), train=train)


def _parse_fidelity(raw: Any, spec: StudySpec, source: str) -> Fidelity:
    where = f"{source}: fidelity"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping (genotypes: ARM, estimators: [ARM, ...], zero_cost: [NAME, ...])")
    allowed = {f.name for f in fields(Fidelity)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], sorted(allowed))}")
    gt = spec.arm(str(raw.get("genotypes", "")))
    if gt.kind != "random_genotypes":
        raise ConfigError(f"{where}: genotypes must name a random_genotypes arm, '{gt.name}' is a {gt.kind} arm")
    if gt.count < 3:
        raise ConfigError(f"{where}: rank fidelity needs at least 3 genotypes, '{gt.name}' draws {gt.count}")
    ests = raw.get("estimators") or []
    zero_cost = _parse_zero_cost(raw, where)
    if not isinstance(ests, list) or not (ests or zero_cost):
        raise ConfigError(f"{where}: estimators must be a list of strategy arms, and it or zero_cost non-empty")
    for e in ests:
        if spec.arm(str(e)).kind != "strategy":
            raise ConfigError(f"{where}: estimator '{e}' is not a strategy arm")
    _check_estimator_spaces(spec, gt, [str(e) for e in ests], where)
    seeds = raw.get("seeds") or []
    if not isinstance(seeds, list) or any(s not in spec.seeds for s in seeds):
        raise ConfigError(f"{where}: seeds must be a list of the study's seeds {list(spec.seeds)}, got {brief(seeds)}")
    boot = raw.get("bootstrap", 1000)
    if not isinstance(boot, int) or isinstance(boot, bool) or not 0 <= boot <= 100_000:
        raise ConfigError(f"{where}: bootstrap must be a count in 0..100000, got {brief(boot)}")
    batches = raw.get("zero_cost_batches", 0)
    if not isinstance(batches, int) or isinstance(batches, bool) or not 0 <= batches <= 1000:
        raise ConfigError(f"{where}: zero_cost_batches must be a count in 0..1000 (0 = as few as the estimators "
                          f"need), got {brief(batches)}")
    return Fidelity(genotypes=gt.name, estimators=tuple(str(e) for e in ests), seeds=tuple(seeds), bootstrap=boot,
                    zero_cost=zero_cost, zero_cost_batches=batches)


def _parse_zero_cost(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    """The zero-cost estimator names of a fidelity block (registered names, none twice)."""
    from bitnas.study.estimators.zero_cost import check_names

    names = raw.get("zero_cost") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: zero_cost must be a list of zero-cost estimator names, got {names!r}")
    return check_names(names, f"{where}: zero_cost")


def _check_estimator_spaces(spec: StudySpec, gt: Arm, estimators: list[str], where: str) -> None:
    """An estimator scores a genotype by its path in the search's supernet: every op the ground-truth
    genotypes may use must be in that search's space (refused now, not after hours of training)."""
    from bitnas.search.strategy import STRATEGIES
    from bitnas.space.spaces import get_space

    drawn = set(get_space(gt.space).ops)
    for name in estimators:
        arm = spec.arm(name)
        space = STRATEGIES.get(arm.strategy).resolve_space(str(arm.search.get("space") or spec.search.get("space") or ""))
        missing = sorted(drawn - set(space.ops))
        if missing:
            raise ConfigError(f"{where}: estimator '{name}' searches the {space.name} space, which lacks {', '.join(missing)} "
                              f"of the '{gt.name}' genotypes ({gt.space} space); give it search: {{space: {gt.space}}} "
                              "or draw the genotypes from its space")
