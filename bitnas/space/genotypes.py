"""Genotypes: the op and input of each kept edge of a normal and a reduction cell.

Parsed from JSON or from the DARTS text users paste from logs, with an AST walker that
accepts only literals, `Genotype(...)` and `range(a, b)` — never `eval`.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from bitnas.errors import ConfigError
from bitnas.registry import Registry
from bitnas.space.edges import concat_range, node_inputs
from bitnas.space.operations import OPS

Edge = tuple[str, int]
MAX_EDGES = 128  # 64 intermediate nodes: far beyond any cell, small enough to refuse forged files early
MAX_TEXT_BYTES = 1 << 20


def is_parametric(op: str) -> bool:
    """True for an op with weights (a convolution); skip, pooling and zero are parameter-free."""
    return "conv" in op


@dataclass(frozen=True)
class Genotype:
    """normal/reduce: (op, input) pairs, two per intermediate node; concat: nodes concatenated."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for f in ("normal", "reduce"):
            object.__setattr__(self, f, tuple((str(o), int(i)) for o, i in getattr(self, f)))
        for f in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, f, tuple(int(i) for i in getattr(self, f)))

    @property
    def steps(self) -> int:
        """Number of intermediate nodes."""
        return len(self.normal) // 2

    def validate(self, source: str = "genotype") -> "Genotype":
        """Raise ConfigError naming the problem; return self when valid."""
        for cell in ("normal", "reduce"):
            edges = getattr(self, cell)
            concat = getattr(self, f"{cell}_concat")
            if not edges or len(edges) % 2:
                raise ConfigError(f"{source}: {cell} cell needs 2 edges per node, got {len(edges)} edges")
            if len(edges) != len(self.normal):
                raise ConfigError(f"{source}: normal and reduce cells have different numbers of edges")
            for k, (op, inp) in enumerate(edges):
                if op not in OPS:
                    raise ConfigError(
                        f"{source}: unknown op '{op}' in {cell} edge {k}; known: {', '.join(OPS.names())}")
                node = k // 2 + 2
                if not 0 <= inp < node:
                    raise ConfigError(
                        f"{source}: {cell} edge {k} ({op}) takes input {inp}, but node {node} can only "
                        f"take inputs 0..{node - 1}")
            steps = len(edges) // 2
            if not concat or any(not 0 <= c < steps + 2 for c in concat):
                raise ConfigError(f"{source}: {cell}_concat {list(concat)} must list nodes in 0..{steps + 1}")
        return self

    def parametric_ops(self) -> dict[str, int]:
        """Edges per cell whose op has weights (a convolution): 0 in a normal cell is the collapse
        of DARTS-style searches to skip connections and pooling (METHODS §7)."""
        return {cell: sum(is_parametric(op) for op, _ in getattr(self, cell)) for cell in ("normal", "reduce")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        def edges(es: Iterable[Edge]) -> str:
            return "[" + ", ".join(f"('{o}', {i})" for o, i in es) + "]"

        return (f"Genotype(normal={edges(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={edges(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "genotype") -> "Genotype":
        if isinstance(d, dict) and "genotype" in d and "normal" not in d:
            d = d["genotype"]
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object with normal/reduce lists")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
        for k in ("normal", "reduce", "normal_concat", "reduce_concat"):
            if not isinstance(d[k], (list, tuple)):
                what = "[op, input] edges" if k in ("normal", "reduce") else "node numbers"
                raise ConfigError(f"{source}: '{k}' must be a list of {what}, got a {type(d[k]).__name__} ({d[k]!r:.60})")
            if len(d[k]) > MAX_EDGES:
                raise ConfigError(f"{source}: '{k}' has {len(d[k])} entries; a cell has at most {MAX_EDGES // 2} nodes here")
        try:
            g = cls(
                normal=tuple(_edge(e, source) for e in d["normal"]),
                normal_concat=tuple(_int(c, source) for c in d["normal_concat"]),
                reduce=tuple(_edge(e, source) for e in d["reduce"]),
                reduce_concat=tuple(_int(c, source) for c in d["reduce_concat"]),
            )
        except TypeError as e:
            raise ConfigError(f"{source}: malformed genotype ({e})") from None
        return g.validate(source)


def _int(v: Any, source: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{source}: expected an integer, got {v!r}")
    return v


def _edge(e: Any, source: str) -> Edge:
    if not isinstance(e, (list, tuple)) or len(e) != 2 or not isinstance(e[0], str):
        raise ConfigError(f"{source}: an edge must be [op_name, input_index], got {e!r:.60}")
    return e[0], _int(e[1], source)


_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


def _literal(node: ast.AST, source: str) -> Any:
    """Evaluate a restricted literal: strings, ints, lists, tuples, range(a[, b])."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(n, source) for n in node.elts]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [_literal(a, source) for a in node.args]
        if node.keywords or not 1 <= len(args) <= 2 or not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{source}: range() takes one or two integers")
        r = range(*args)
        if r.stop - r.start > 1000:  # a cell has a handful of nodes; refuse before materialising a huge list
            raise ConfigError(f"{source}: range({', '.join(map(str, args))}) is far too long for a genotype")
        return list(r)
    raise ConfigError(f"{source}: unsupported expression '{ast.unparse(node)}' in genotype text")


def parse_genotype_text(text: str, source: str = "genotype text") -> Genotype:
    """Parse `Genotype(normal=[...], normal_concat=range(2, 6), ...)` without eval."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"{source}: not a valid genotype expression ({e.msg} at column {e.offset})") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, (ast.Name, ast.Attribute))):
        raise ConfigError(f"{source}: expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)")
    name = call.func.id if isinstance(call.func, ast.Name) else call.func.attr
    if name != "Genotype":
        raise ConfigError(f"{source}: expected Genotype(...), got {name}(...)")
    values: dict[str, Any] = {}
    if len(call.args) > len(_FIELDS):
        raise ConfigError(f"{source}: Genotype takes 4 fields")
    for f, a in zip(_FIELDS, call.args):
        values[f] = _literal(a, source)
    for kw in call.keywords:
        if kw.arg not in _FIELDS:
            raise ConfigError(f"{source}: unknown Genotype field '{kw.arg}'")
        values[kw.arg] = _literal(kw.value, source)
    return Genotype.from_dict(values, source)


GENOTYPES: Registry[Genotype] = Registry("genotype")

GENOTYPES.register("DARTS_V1", parse_genotype_text(
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"))
GENOTYPES.register("DARTS_V2", parse_genotype_text(
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"), aliases=("DARTS",))
GENOTYPES.register("PC_DARTS_cifar", parse_genotype_text(
    "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
    "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
    "normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
    "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 2)], reduce_concat=range(2, 6))"), aliases=("PCDARTS", "PC_DARTS"))
GENOTYPES.register("PDARTS", parse_genotype_text(
    "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], "
    "normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), "
    "('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), "
    "('dil_conv_5x5', 3)], reduce_concat=range(2, 6))"), aliases=("P_DARTS",))


def load_genotype(spec: str) -> Genotype:
    """A registered name, a JSON file (genotype.json of a run), or pasted Genotype(...) text."""
    s = spec.strip()
    if not s:
        raise ConfigError("genotype: empty; give a registered name (see `bitnas genotypes`), a genotype JSON file "
                          "or pasted Genotype(...) text")
    if s in GENOTYPES:
        return GENOTYPES.get(s)
    if s.startswith("Genotype"):
        return parse_genotype_text(s)
    p = Path(s)
    if p.suffix.lower() in (".json", ".txt", ".py") or p.exists():
        if not p.is_file():
            raise ConfigError(f"{spec}: genotype file not found")
        text = read_text_file(p, "genotype file")
        if text.lstrip().startswith("Genotype"):
            return parse_genotype_text(text, source=str(p))
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return Genotype.from_dict(d, source=str(p))
    GENOTYPES.canonical(s)  # raises with did-you-mean and the known names
    raise AssertionError("unreachable")


def read_text_file(p: Path, what: str) -> str:
    """The UTF-8 text of a user file, or a ConfigError saying why not (unreadable, not text, too big)."""
    try:
        if p.stat().st_size > MAX_TEXT_BYTES:
            raise ConfigError(f"{p}: {p.stat().st_size:,} bytes is far too large for a {what}")
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a text {what} (not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start})") from None


def build_hints(spec: str) -> dict[str, str]:
    """Module structure and activation a search recorded beside its genotype (genotype.json),
    so the found network is trained with the op forms it was searched with; {} otherwise."""
    p = Path(spec.strip())
    if p.suffix.lower() != ".json" or not p.is_file():
        return {}
    try:
        d = json.loads(read_text_file(p, "genotype file"))
    except (json.JSONDecodeError, ConfigError):
        return {}
    if not isinstance(d, dict):
        return {}
    return {k: str(d[k]) for k in ("structure", "activation") if isinstance(d.get(k), str) and d[k]}


def random_genotype(ops: Sequence[str], zero_op: str | None, gen: torch.Generator, steps: int = 4,
                    multiplier: int = 4) -> Genotype:
    """A uniform draw from the space: per node 2 distinct inputs, each with a uniform non-zero op."""
    keep = [o for o in ops if o != zero_op]
    if not keep:
        raise ConfigError("random genotype: the space has no op besides the zero op")
    cells = []
    for _ in range(2):
        gene = []
        for i in range(steps):
            inputs = sorted(torch.randperm(node_inputs(i), generator=gen)[:2].tolist())
            for j in inputs:
                gene.append((keep[int(torch.randint(len(keep), (1,), generator=gen))], j))
        cells.append(tuple(gene))
    concat = concat_range(steps, multiplier)
    return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=concat)
