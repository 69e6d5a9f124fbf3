"""Genotypes: published values, JSON/text round trips, validation, safe parsing, load_genotype."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitnas.errors import ConfigError
from bitnas.space.genotypes import GENOTYPES, Genotype, load_genotype, parse_genotype_text

# Written out literally from genotypes.py of the DARTS (quark0/darts), PC-DARTS (yuhuixu1993/PC-DARTS)
# and P-DARTS (chenxin061/pdarts) repositories.
PUBLISHED = {
    "DARTS_V1": dict(
        normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
        reduce_concat=[2, 3, 4, 5]),
    "DARTS_V2": dict(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
        reduce_concat=[2, 3, 4, 5]),
    "PC_DARTS_cifar": dict(
        normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
        reduce_concat=[2, 3, 4, 5]),
    "PDARTS": dict(
        normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
                ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
        reduce_concat=[2, 3, 4, 5]),
}

# PC-DARTS' own text, as users paste it (range(2, 6)).
PC_DARTS_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
    "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
    "normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
    "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 2)], reduce_concat=range(2, 6))")


def _text(normal_concat="[2, 3, 4, 5]", reduce_concat="[2, 3, 4, 5]", normal=None, reduce=None) -> str:
    g = PUBLISHED["DARTS_V2"]
    def edges(es):
        return "[" + ", ".join(f"('{o}', {i})" for o, i in es) + "]"
    return (f"Genotype(normal={normal or edges(g['normal'])}, normal_concat={normal_concat}, "
            f"reduce={reduce or edges(g['reduce'])}, reduce_concat={reduce_concat})")


# ---------------------------------------------------------------- published values


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_genotypes_exact(name):
    g = GENOTYPES.get(name)
    exp = PUBLISHED[name]
    assert list(g.normal) == exp["normal"]
    assert list(g.reduce) == exp["reduce"]
    assert list(g.normal_concat) == exp["normal_concat"]
    assert list(g.reduce_concat) == exp["reduce_concat"]
    assert g.steps == 4


def test_registry_holds_the_four_published_and_aliases():
    assert set(PUBLISHED) <= set(GENOTYPES.names())
    assert GENOTYPES.get("PCDARTS") == GENOTYPES.get("PC_DARTS_cifar")
    assert GENOTYPES.get("DARTS") == GENOTYPES.get("DARTS_V2")  # DARTS repo: DARTS = DARTS_V2


def test_darts_v2_normal_cell_literal():
    assert list(GENOTYPES.get("DARTS_V2").normal) == [
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", GENOTYPES.names())
def test_json_round_trip(name):
    g = GENOTYPES.get(name)
    d = g.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Genotype.from_dict(d) == g
    assert Genotype.from_dict(json.loads(g.to_json())) == g
    assert set(d) == {"normal", "normal_concat", "reduce", "reduce_concat"}
    assert d["normal"][0] == list(g.normal[0])


@pytest.mark.parametrize("name", GENOTYPES.names())
def test_text_round_trip(name):
    g = GENOTYPES.get(name)
    s = str(g)
    assert s.startswith("Genotype(normal=[(")
    assert parse_genotype_text(s) == g
    assert load_genotype(s) == g


def test_parse_darts_text_with_range_and_list():
    g_range = parse_genotype_text(_text("range(2, 6)", "range(2, 6)"))
    g_list = parse_genotype_text(_text())
    assert g_range == g_list == GENOTYPES.get("DARTS_V2")
    assert g_range.normal_concat == (2, 3, 4, 5)
    assert parse_genotype_text(PC_DARTS_TEXT) == GENOTYPES.get("PC_DARTS_cifar")


def test_parse_tolerates_whitespace_newlines_and_tuples():
    text = "\n  " + _text("(2, 3, 4, 5)").replace(", ('", ",\n    ('") + "  \n"
    assert parse_genotype_text(text) == GENOTYPES.get("DARTS_V2")
    # positional arguments, qualified name (genotypes.Genotype) as logged by some code bases
    g = PUBLISHED["DARTS_V1"]
    pos = f"genotypes.Genotype({g['normal']!r}, {g['normal_concat']!r}, {g['reduce']!r}, {g['reduce_concat']!r})"
    assert parse_genotype_text(pos) == GENOTYPES.get("DARTS_V1")


# ---------------------------------------------------------------- validation


def _dict(**change):
    d = {k: (list(v) if not isinstance(v, list) else [list(e) if isinstance(e, tuple) else e for e in v])
         for k, v in PUBLISHED["DARTS_V2"].items()}
    d.update(change)
    return d


def test_unknown_op_is_named():
    bad = _dict(normal=[["sep_conv_9x9", 0]] + _dict()["normal"][1:])
    with pytest.raises(ConfigError, match=r"unknown op 'sep_conv_9x9'"):
        Genotype.from_dict(bad)
    with pytest.raises(ConfigError, match="sep_conv_9x9"):
        parse_genotype_text(_text(normal="[('sep_conv_9x9', 0)" + ", ('sep_conv_3x3', 1)" * 7 + "]"))


def test_input_index_out_of_range_is_named():
    normal = _dict()["normal"]
    normal[2] = ["sep_conv_3x3", 3]  # node 3 (edges 2, 3) may use inputs 0..2
    with pytest.raises(ConfigError) as ei:
        Genotype.from_dict(_dict(normal=normal))
    msg = str(ei.value)
    assert "input 3" in msg and "0..2" in msg and "normal" in msg
    reduce = _dict()["reduce"]
    reduce[0] = ["max_pool_3x3", -1]
    with pytest.raises(ConfigError, match="input -1"):
        Genotype.from_dict(_dict(reduce=reduce))


def test_odd_number_of_edges_is_named():
    d = _dict()
    with pytest.raises(ConfigError, match="7 edges"):
        Genotype.from_dict(_dict(normal=d["normal"][:7], reduce=d["reduce"][:7]))
    with pytest.raises(ConfigError, match="normal and reduce"):
        Genotype.from_dict(_dict(normal=d["normal"][:6], normal_concat=[2, 3, 4]))


@pytest.mark.parametrize("field", ["normal", "normal_concat", "reduce", "reduce_concat"])
def test_missing_field_is_named(field):
    d = _dict()
    del d[field]
    with pytest.raises(ConfigError, match=f"missing field.*{field}"):
        Genotype.from_dict(d)


def test_missing_field_in_text_is_named():
    text = _text().split(", reduce_concat=")[0] + ")"
    with pytest.raises(ConfigError, match="reduce_concat"):
        parse_genotype_text(text)


@pytest.mark.parametrize("bad", [
    {"normal": 3, "normal_concat": [2], "reduce": [], "reduce_concat": [2]},
    {"normal": [["sep_conv_3x3"]] * 2, "normal_concat": [2], "reduce": [["skip_connect", 0]] * 2,
     "reduce_concat": [2]},
    {"normal": [["sep_conv_3x3", "0"]] * 2, "normal_concat": [2], "reduce": [["skip_connect", 0]] * 2,
     "reduce_concat": [2]},
    {"normal": [["sep_conv_3x3", 0]] * 2, "normal_concat": [9], "reduce": [["skip_connect", 0]] * 2,
     "reduce_concat": [2]},
    [1, 2, 3],
])
def test_malformed_dicts_raise_config_error(bad):
    with pytest.raises(ConfigError):
        Genotype.from_dict(bad)


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch {marker}')",
    "Genotype(normal=__import__('os').system('touch {marker}'), normal_concat=[2], reduce=[], reduce_concat=[2])",
    "Genotype(normal=os.system('touch {marker}'), normal_concat=[2], reduce=[], reduce_concat=[2])",
    "Genotype(normal=[('sep_conv_3x3', 0)] * 8, normal_concat=[2], reduce=[], reduce_concat=[2])",
    "Genotype(normal=[(open('{marker}', 'w').write('x'), 0)], normal_concat=[2], reduce=[], reduce_concat=[2])",
    "Genotype(normal=[('a', 0)], normal_concat=range(2, 6, 1), reduce=[], reduce_concat=[2])",
    "Genotype(normal=[('a', 0)], normal_concat=range(n), reduce=[], reduce_concat=[2])",
    "Genotype(normal=[('a', 0)], foo=1)",
    "(lambda: __import__('os').system('touch {marker}'))()",
    "exec('import os')",
    "Genotype(normal=[('sep_conv_3x3', 1)",
    # would materialise a list of 10^12 (or more) ints before validation
    "Genotype(normal=[('sep_conv_3x3', 0)] , normal_concat=range(1000000000000), reduce=[], reduce_concat=[2])",
    "Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=range(2, 99999999999999999999999999999), reduce=[], "
    "reduce_concat=[2])",
    "Genotype(normal=[('sep_conv_3x3', True)] * 2, normal_concat=[2], reduce=[], reduce_concat=[2])",
])
def test_malicious_or_invalid_text_is_refused_without_executing(text, tmp_path):
    marker = tmp_path / "pwned"
    t = text.format(marker=marker)
    with pytest.raises(ConfigError):
        parse_genotype_text(t)
    with pytest.raises(ConfigError):
        load_genotype(t)
    assert not marker.exists()


# ---------------------------------------------------------------- load_genotype


def test_load_by_name_and_alias():
    assert load_genotype("DARTS_V2") is GENOTYPES.get("DARTS_V2")
    assert load_genotype("  PCDARTS ") == GENOTYPES.get("PC_DARTS_cifar")


def test_load_unknown_name_suggests_close_one():
    with pytest.raises(ConfigError) as ei:
        load_genotype("DARTS_V3")
    msg = str(ei.value)
    assert "did you mean 'DARTS_V" in msg
    assert all(n in msg for n in PUBLISHED)


def test_load_json_file(tmp_path: Path):
    p = tmp_path / "genotype.json"
    p.write_text(GENOTYPES.get("PDARTS").to_json())
    assert load_genotype(str(p)) == GENOTYPES.get("PDARTS")


def test_load_run_style_json_file(tmp_path: Path):
    p = tmp_path / "result.json"
    p.write_text(json.dumps({"genotype": GENOTYPES.get("DARTS_V1").to_dict(), "epoch": 49, "strategy": "darts"}))
    assert load_genotype(str(p)) == GENOTYPES.get("DARTS_V1")


def test_load_text_file(tmp_path: Path):
    p = tmp_path / "genotype.txt"
    p.write_text(PC_DARTS_TEXT + "\n")
    assert load_genotype(str(p)) == GENOTYPES.get("PC_DARTS_cifar")


def test_load_pasted_text():
    assert load_genotype(PC_DARTS_TEXT) == GENOTYPES.get("PC_DARTS_cifar")


def test_load_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_genotype(str(tmp_path / "missing.json"))
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_genotype(str(p))
    q = tmp_path / "wrong.json"
    q.write_text(json.dumps({"normal": [["sep_conv_3x3", 0]]}))
    with pytest.raises(ConfigError, match="missing field"):
        load_genotype(str(q))


def test_edge_numbering_closed_forms() -> None:
    """Node i has 2 + i inputs; 4 nodes: 14 edges, numbered node by node; concat the last 4 states."""
    from bitnas.space.edges import concat_range, edge_position, node_edges, num_edges, steps_for

    assert [num_edges(s) for s in range(6)] == [0, 2, 5, 9, 14, 20]
    assert node_edges(4) == [range(0, 2), range(2, 5), range(5, 9), range(9, 14)]
    assert [edge_position(e) for e in (0, 1, 2, 4, 5, 13)] == [(0, 2), (1, 2), (0, 3), (2, 3), (0, 4), (4, 5)]
    assert [steps_for(num_edges(s)) for s in range(1, 6)] == [1, 2, 3, 4, 5] and concat_range(4, 4) == (2, 3, 4, 5)
    assert concat_range(5, 3) == (4, 5, 6)
    with pytest.raises(ValueError, match="not a DARTS cell"):
        steps_for(13)
