"""User YAML is read with bounds on size, depth and alias expansion, never at the cost of valid files."""
from __future__ import annotations

import time

import pytest
import yaml

from bitnas.common.safe_yaml import MAX_DEPTH, MAX_NODES, load_yaml
from bitnas.errors import ConfigError


def test_ordinary_yaml_reads_as_safe_load_does() -> None:
    text = ("base: &b {lr: 0.1, epochs: 2}\nruns: [*b, *b]\nquoted: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
            "[[[[[[[[[[[[[[[['\nnote: \"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\"  # [[[[[[[[[[[[[[["
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nnested: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2) + "\n")
    assert load_yaml(text, "f") == yaml.safe_load(text)
    assert load_yaml("", "f") is None


@pytest.mark.parametrize("text,message", [
    ("a: " + "[" * 200_000, f"nests deeper than {MAX_DEPTH} levels"),
    ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nests deeper than {MAX_DEPTH} levels"),
    ("".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)), f"nests deeper than {MAX_DEPTH} levels"),
    ("a: &a [*a]\n", "refers to itself"),
    ("l0: &l0 [" + ", ".join(["x"] * 400) + "]\nl1: [" + ", ".join(["*l0"] * 400) + "]\n",
     f"expands to more than {MAX_NODES:,} values"),
    ("a: [\n", "not valid YAML"),
])
def test_refused_fast_in_one_line(text: str, message: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as e:
        load_yaml(text, "spec.yaml")
    assert time.perf_counter() - t0 < 5  # plain safe_load: minutes for 200,000 brackets, GBs for the aliases
    assert str(e.value).startswith("spec.yaml: ") and "\n" not in str(e.value) and len(str(e.value)) < 300
