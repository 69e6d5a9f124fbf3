"""A search refuses config keys its strategy would silently ignore."""
from __future__ import annotations

from pathlib import Path

import pytest

from bitnas.cli import main
from bitnas.errors import ConfigError
from bitnas.search import strategies  # noqa: F401 - registers the strategies
from bitnas.search.config import SearchConfig
from bitnas.search.strategy import COMMON_KEYS, STRATEGIES, check_strategy_keys, keys_read, unread_keys


def test_issue_example_is_refused_with_the_keys_cpnas_reads(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["search", "--strategy", "cpnas", "--out", str(out), "precision=fp32", "unrolled=true", "epochs=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("bitnas: error: strategy cpnas does not read precision, epochs, unrolled;")
    assert "rounds" in err[0] and "beta_p" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("name", ["cpnas", "darts", "pcdarts", "ubnas", "random", "zero_cost"])
def test_every_key_is_read_by_some_strategy_and_defaults_pass(name: str) -> None:
    cls = STRATEGIES.get(name)
    check_strategy_keys(SearchConfig(strategy=name), cls)
    every = set().union(*(keys_read(STRATEGIES.get(n)) for n in STRATEGIES.names()))
    assert every == set(vars(SearchConfig())) - {"style"}


@pytest.mark.parametrize("name,key,value,refused", [
    ("cpnas", "epochs", 3, True), ("cpnas", "rounds", 2, False), ("darts", "rounds", 2, True),
    ("darts", "unrolled", True, False), ("random", "arch_lr", 1e-3, True), ("random", "random_samples", 3, False),
    ("pcdarts", "beta_p", 1.0, True), ("ubnas", "early_stop_patience", 5, False), ("cpnas", "style", "imagenet", True),
    ("zero_cost", "epochs", 3, True), ("zero_cost", "zero_cost_samples", 5, False), ("random", "zero_cost_samples", 5, True),
])
def test_strategy_key_table(name: str, key: str, value, refused: bool) -> None:
    cfg = SearchConfig(strategy=name, **{key: value})
    assert (key in unread_keys(cfg, STRATEGIES.get(name))) is refused
    if refused:
        with pytest.raises(ConfigError, match=key):
            check_strategy_keys(cfg, STRATEGIES.get(name))


def test_common_keys_exist() -> None:
    assert COMMON_KEYS <= set(vars(SearchConfig()))
