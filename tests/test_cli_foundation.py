"""CLI foundation: summary with pasted genotype text, one-line user errors, genotypes listing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitnas.cli import main
from bitnas.space.genotypes import GENOTYPES

torch.set_num_threads(1)

PUBLISHED = ("DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PDARTS")
EXE = Path(sys.executable).with_name("bitnas")
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
SMALL = ["--init-channels", "8", "--layers", "5", "--image-size", "16"]

PASTED = (
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
    "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
    "reduce_concat=range(2, 6))")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, env=ENV, timeout=120)


def _assert_one_line_error(err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bitnas: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_summary_with_pasted_genotype_text(capsys):
    rc = main(["summary", "--genotype", PASTED, *SMALL, "--json", "--no-layers"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    pasted = json.loads(out)
    assert main(["summary", "--genotype", "DARTS_V1", *SMALL, "--json", "--no-layers"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert pasted == named  # the pasted text is DARTS_V1 with range(2, 6)


def test_summary_text_table(capsys):
    assert main(["summary", "--genotype", "PDARTS", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "1-bit" in out and "OPs = FLOPs+BOPs/64" in out and "cells.0." in out


def test_summary_with_genotype_json_file(tmp_path, capsys):
    p = tmp_path / "genotype.json"
    p.write_text(json.dumps({"genotype": GENOTYPES.get("PDARTS").to_dict()}))
    assert main(["summary", "--genotype", str(p), *SMALL, "--json", "--no-layers"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["summary", "--genotype", "PDARTS", *SMALL, "--json", "--no-layers"]) == 0
    assert a == json.loads(capsys.readouterr().out)


def test_malformed_genotype_subprocess_one_line_error():
    bad = PASTED.replace("reduce_concat=range(2, 6))", "reduce_concat=range(2, 6)")  # unbalanced
    r = _run("summary", "--genotype", bad, *SMALL)
    assert r.returncode != 0
    line = _assert_one_line_error(r.stderr)
    assert "genotype" in line
    assert r.stdout == ""


def test_malicious_genotype_is_refused_without_executing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    rc = main(["summary", "--genotype", f"Genotype(normal=__import__('os').system('touch {marker}'), "
                                        f"normal_concat=[2], reduce=[], reduce_concat=[2])", *SMALL])
    assert rc != 0
    _assert_one_line_error(capsys.readouterr().err)
    assert not marker.exists()


@pytest.mark.parametrize("text,needle", [
    (PASTED.replace("'sep_conv_3x3', 1)", "'sep_conv_9x9', 1)", 1), "unknown op 'sep_conv_9x9'"),
    (PASTED.replace("('skip_connect', 2)]", "('skip_connect', 7)]", 1), "input 7"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2])", "missing field"),
    ("__import__('os').system('echo hi')", "unknown genotype"),
])
def test_invalid_genotypes_in_process_one_line_error(text, needle, capsys):
    rc = main(["summary", "--genotype", text, *SMALL])
    out, err = capsys.readouterr()
    assert rc != 0
    line = _assert_one_line_error(err)
    assert needle in line
    assert "hi" not in out


def test_unknown_genotype_name_suggests_close_one(capsys):
    assert main(["summary", "--genotype", "PC_DARTS_cifr", *SMALL]) == 2
    line = _assert_one_line_error(capsys.readouterr().err)
    assert "did you mean 'PC_DARTS_cifar'" in line
    assert all(n in line for n in PUBLISHED)


def test_unknown_structure_and_missing_genotype_are_user_errors(capsys):
    assert main(["summary", "--genotype", "DARTS_V2", "--structure", "bireel", *SMALL]) == 2
    assert "did you mean 'bireal'" in _assert_one_line_error(capsys.readouterr().err)
    assert main(["summary", *SMALL]) == 2
    assert "--genotype" in _assert_one_line_error(capsys.readouterr().err)


def test_genotypes_command_lists_all_published(capsys):
    assert main(["genotypes"]) == 0
    out = capsys.readouterr().out
    listed = {line.split(":", 1)[0] for line in out.splitlines() if line.strip()}
    assert set(PUBLISHED) <= listed
    for line in out.splitlines():
        name, text = line.split(": ", 1)
        assert text == str(GENOTYPES.get(name))


def test_genotypes_json(capsys):
    assert main(["genotypes", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(PUBLISHED) <= set(d)
    assert d["DARTS_V2"]["normal"][-1] == ["dil_conv_3x3", 2]
    assert all(GENOTYPES.get(n).to_dict() == v for n, v in d.items())


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "summary" in capsys.readouterr().out
