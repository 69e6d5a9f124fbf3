"""YAML from users (recipes, study specs, overrides, a study's study.yaml), read with bounds.

`yaml.safe_load` never runs code, but it will compose a document of any depth (a deeply nested
file ends in a RecursionError) and it expands nothing until a reader walks the value: a "billion
laughs" of aliases loads in a blink as a few shared lists, then every traversal (a copy, a dump,
an error message's repr) walks hundreds of millions of references. `load_yaml` refuses, before
anything is constructed, a text over MAX_BYTES, a document nesting deeper than MAX_DEPTH, one
whose aliases expand to more than MAX_NODES values, and an alias that refers to itself.
"""
from __future__ import annotations

from typing import Any

import yaml

from bitnas.errors import ConfigError

MAX_BYTES = 256 << 10  # pure-Python parsing (the bounded composer needs it) reads ~50k characters a second
MAX_DEPTH = 64
MAX_NODES = 100_000


class _Refused(Exception):
    """A bound was crossed while composing (turned into a ConfigError by `load_yaml`)."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops composing past MAX_DEPTH levels."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _flow_depth(text: str) -> int:
    """Deepest nesting of flow brackets ([ and {) outside quotes and comments. PyYAML's scanner is
    quadratic in it (10,000 levels take seconds, 100,000 minutes), so it is bounded before parsing."""
    depth = deepest = 0
    quote = ""
    prev = "\n"
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == quote:
                if quote == "'" and i + 1 < n and text[i + 1] == "'":
                    i += 1
                else:
                    quote = ""
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "#" and prev in " \t\n":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        elif c in "]}":
            depth = max(0, depth - 1)
        prev = c
        i += 1
    return deepest


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Count the values (and levels) `root` has once every alias is expanded, without expanding
    anything: each node is visited once and its expanded size memoised (post-order, no recursion)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in kids)
            depth[key] = 1 + max((depth[id(c)] for c in kids), default=0)
            open_.discard(key)
            if size[key] > MAX_NODES:
                raise _Refused(f"expands to more than {MAX_NODES:,} values once its aliases are resolved")
            if depth[key] > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels once its aliases are resolved")
            continue
        if key in size:
            continue
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                raise _Refused("holds an alias that refers to itself")
            if id(child) not in size:
                stack.append((child, False))


def load_yaml(text: str, source: str) -> Any:
    """The value of YAML `text` (None for an empty document), or a one-line ConfigError naming
    `source` and the problem."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters is more than the {MAX_BYTES:,} a YAML file may hold")
    if _flow_depth(text) > MAX_DEPTH:
        raise ConfigError(f"{source}: nests deeper than {MAX_DEPTH} levels")
    loader = BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _Refused as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{source}: not valid YAML ({first})") from None
    finally:
        loader.dispose()


def read_yaml(path: Any, what: str = "YAML file") -> Any:
    """`load_yaml` of a file, with unreadable and non-UTF-8 files refused in one line."""
    from bitnas.common.files import os_reason

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({os_reason(e)})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: more than the {MAX_BYTES:,} bytes a {what} may hold")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8)") from None
    return load_yaml(text, str(path))
