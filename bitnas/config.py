"""Configs flow one way: YAML recipe → CLI flags and key=value overrides → constructor kwargs.

Each command has a flat dataclass config. Unknown keys and bad values are refused with the
closest valid name. `add_config_args` exposes selected fields as `--flags`; every other field
is reachable as `key=value`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bitnas.common.safe_yaml import load_yaml, read_yaml
from bitnas.errors import ConfigError, brief
from bitnas.registry import did_you_mean

C = TypeVar("C")
MAX_SEED = 2**63 - 1
RECIPES_DIR = Path(__file__).parent / "recipes"


def opt(default: Any, help: str = "", flag: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with help text; `flag=True` also makes it a --kebab-case CLI flag."""
    kw: dict[str, Any] = {"metadata": {"help": help, "flag": flag, "choices": choices}}
    if isinstance(default, (list, dict)):
        kw["default_factory"] = lambda d=default: type(d)(d)
    else:
        kw["default"] = default
    return field(**kw)


@dataclass
class BaseConfig:
    """Options shared by every command that builds data and a network."""

    data: str = opt("fashion-mnist", "dataset NAME[:PATH]: fashion-mnist, fashion-mnist-embedded, mnist, kmnist, idx:DIR, "
                    "cifar10, cifar100, imagefolder:DIR", flag=True)
    train_subset: int = opt(0, "use only N training images (class-balanced; 0 = all)", flag=True)
    batch_size: int = opt(64, "mini-batch size (per process)", flag=True)
    seed: int = opt(0, "random seed (data split, init, sampling)", flag=True)
    device: str = opt("auto", "auto, cpu or cuda", flag=True)
    out: str = opt("", "run directory (default: runs/<command>-<time>)", flag=True)
    init_channels: int = opt(16, "initial channels C", flag=True)
    layers: int = opt(8, "number of cells", flag=True)
    style: str = opt("cifar", "network style: cifar (one stem) or imagenet (three stride-2 stems)", choices=("cifar", "imagenet"))
    precision: str = opt("binary", "binary (1-bit child) or fp32 (full-precision parent)", flag=True, choices=("binary", "fp32"))
    structure: str = opt("", "module structure of binary ops (darts, cpnas, bireal, ebnas, kim, reactnet; empty = the space's default)", flag=True)
    activation: str = opt("", "activation quantizer of binary convs (ste_sign, approx_sign, swish_sign; empty = default)")
    weight_quantizer: str = opt("ste_sign", "weight quantizer of binary convs")
    weight_scale: str = opt("channel", "binary weight scale α: channel, layer, learned, none", choices=("channel", "layer", "learned", "none"))
    pad_value: float = opt(0.0, "padding value inside binary convs (0 as DARTS/Bi-Real, 1 keeps inputs strictly ±1)")
    binary_preprocess: bool = opt(True, "binarise the 1×1 preprocessing / factorized-reduce convs of cells")
    num_workers: int = opt(0, "worker processes decoding streamed image folders (bitnas train, stream; 0 = decode in "
                           "the training process; in-memory data ignores it)")
    progress: str = opt("auto", "progress bars: auto (terminal only, never in CI), on, off", choices=("auto", "on", "off"))
    force: bool = opt(False, "replace an earlier run in --out (its checkpoints, metrics and results are deleted)",
                      flag=True)

    def check_common(self) -> None:
        """Refuse values of the shared keys that would fail later or make no sense, naming the key."""
        refuse_failed(self, [
            (self.data.strip() != "", "data", "must name a dataset"),
            (self.train_subset >= 0, "train_subset", "must be >= 0 (0 = all)"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (0 <= self.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED}"),
            (self.init_channels >= 1, "init_channels", "must be at least 1"),
            (self.layers >= 1, "layers", "must be at least 1"),
            (self.num_workers >= 0, "num_workers", "must be >= 0"),
        ])


def refuse_failed(cfg: Any, checks: list[tuple[bool, str, str]]) -> None:
    """Raise ConfigError for the first failed (ok, key, message) check, naming the key(s) and value(s);
    `key` may join several keys with '/'."""
    for ok, key, msg in checks:
        if not ok:
            value = "/".join(brief(getattr(cfg, k)) for k in key.split("/"))
            raise ConfigError(f"{key}: {msg}, got {value:.80}")


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def _coerce(cls: type, f: dataclasses.Field, value: Any, source: str) -> Any:
    """Convert `value` (from YAML or a string override) to the field's type, or refuse."""
    tp = _field_type(cls, f)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        tp = non_none[0]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                out: Any = value
            elif isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                out = True
            elif isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                out = False
            else:
                raise ValueError
        elif tp is int:
            if isinstance(value, bool):
                raise ValueError
            out = int(value) if not isinstance(value, float) or value.is_integer() else _fail()
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ConfigError(f"{source}: '{f.name}' must be a finite number, got {brief(value)}")
        elif tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            out = str(value)
        elif origin in (list, tuple):
            if isinstance(value, str):
                value = load_yaml(value, source) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)):
                value = [value]
            inner = args[0] if args else str
            out = [inner(v) for v in value]
            if origin is tuple:
                out = tuple(out)
        else:
            out = value
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(f"{source}: '{f.name}' expects {getattr(tp, '__name__', tp)}, got {brief(value, 80)}") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{source}: '{f.name}' must be one of {', '.join(choices)}, got {brief(out)}"
                          f"{did_you_mean(str(out)[:100], list(choices))}")
    return out


def _fail() -> Any:
    raise ValueError


def positive_int(text: str) -> int:
    """argparse type: an integer in 1..1024 (threads, top-k, batch sizes of small commands)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= v <= 1024:
        raise argparse.ArgumentTypeError(f"expected 1..1024, got {v}")
    return v


def update_config(cfg: C, values: dict[str, Any], source: str) -> C:
    """Return a copy of `cfg` with `values` applied, each checked and coerced."""
    by_name = {f.name: f for f in fields(cfg)}
    changes = {}
    for key, value in values.items():
        k = key.replace("-", "_")
        if k not in by_name:
            raise ConfigError(f"{source}: unknown key '{key}'{did_you_mean(k, list(by_name))}")
        changes[k] = _coerce(type(cfg), by_name[k], value, source)
    return dataclasses.replace(cfg, **changes)


def find_recipe(name: str, what: str = "--config") -> Path:
    """A recipe file path, or the name of one shipped in bitnas/recipes (with or without .yaml)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    if p.exists():
        raise ConfigError(f"{what} {name}: not a file")
    known = sorted(r.stem for r in RECIPES_DIR.glob("*.yaml"))
    raise ConfigError(f"{what} {name}: no such file or recipe{did_you_mean(p.stem, known)}; recipes: {', '.join(known)}")


def load_recipe(name: str) -> tuple[dict[str, Any], Path]:
    path = find_recipe(name)
    data = read_yaml(path, "recipe") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of key: value")
    data.pop("description", None)
    data.pop("command", None)
    return data, path


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings → dict (values stay strings; YAML-typed on coercion)."""
    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"override '{it}': expected key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def resolve_config(cls: type[C], recipe: str | None = None, flags: dict[str, Any] | None = None,
                   overrides: list[str] | None = None) -> C:
    """recipe → flags → overrides, in that order; every step validated."""
    cfg = cls()
    if recipe:
        data, path = load_recipe(recipe)
        cfg = update_config(cfg, data, str(path))
    if flags:
        cfg = update_config(cfg, flags, "command line")
    if overrides:
        cfg = update_config(cfg, parse_overrides(overrides), "override")
    return cfg


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(_plain(dataclasses.asdict(cfg)), sort_keys=False)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """--config, the fields marked flag=True as --kebab-case options, and key=value overrides."""
    parser.add_argument("--config", metavar="RECIPE", help="YAML recipe file or shipped recipe name (see `bitnas recipes`)")
    for f in fields(cls):
        if not f.metadata.get("flag"):
            continue
        tp = _field_type(cls, f)
        name = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not MISSING else None
        if tp is bool:
            parser.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{help_} (default: {default})")
        else:
            parser.add_argument(name, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(),
                                help=f"{help_} (default: {default!r})")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="set any config key, e.g. epochs=3 (see the recipe files for all keys)")


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    flags = {f.name: getattr(args, f.name) for f in fields(cls) if f.metadata.get("flag") and hasattr(args, f.name)}
    return resolve_config(cls, getattr(args, "config", None), flags, list(getattr(args, "overrides", []) or []))


# Keys that may change between a run and its resume without changing its trajectory.
RESUME_FREE_KEYS = frozenset({"resume", "force", "out", "progress", "device", "num_workers", "threads", "eval_every",
                              "test_eval", "cp_concurrent", "prefetch_factor", "persistent_workers", "pin_memory",
                              "bad_images", "cudnn_benchmark", "sync_every"})


def check_resume_config(saved: dict[str, Any], cfg: Any, source: str) -> None:
    """Refuse to resume a run whose stored config differs from `cfg` in a key that shapes its results."""
    mine = dataclasses.asdict(cfg)
    changed = sorted(k for k in mine if k not in RESUME_FREE_KEYS and k in saved and saved[k] != mine[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} → {mine[k]!r}" for k in changed)
        raise ConfigError(f"{source}: resume needs the same config; changed: {diffs}")
