"""Bit-aware summary: the DARTS reference parameter counts, 1-bit/32-bit split, BOPs/FLOPs/OPs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bitnas.binary import BinaryConv2d
from bitnas.cli import main
from bitnas.nets import build_network
from bitnas.space.genotypes import GENOTYPES
from bitnas.summary import format_table, summarize

torch.set_num_threads(1)

# Parameter counts of the reference DARTS model.py (NetworkCIFAR / NetworkImageNet), counting every
# parameter whose name has no 'auxiliary', measured by running the reference code.
DARTS_CIFAR_PARAMS = {  # 36 initial channels, 20 cells, 10 classes
    "DARTS_V1": 3169414, "DARTS_V2": 3349342, "PC_DARTS_cifar": 3634678, "PDARTS": 3433798,
}
DARTS_IMAGENET_PARAMS = {  # 48 initial channels, 14 cells, 1000 classes
    "DARTS_V1": 4510432, "DARTS_V2": 4718752, "PC_DARTS_cifar": 5270560, "PDARTS": 4944352,
}


def _cli_json(capsys, *args: str) -> dict:
    rc = main(["summary", *args, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize("genotype", sorted(DARTS_CIFAR_PARAMS))
def test_cifar_fp32_params_equal_reference_darts(genotype, capsys):
    d = _cli_json(capsys, "--genotype", genotype, "--precision", "fp32", "--init-channels", "36",
                  "--layers", "20", "--num-classes", "10", "--no-layers", "--image-size", "8")
    assert d["params"] == DARTS_CIFAR_PARAMS[genotype]
    assert d["params_1bit"] == 0 and d["params_32bit"] == d["params"]
    assert d["bops"] == 0 and d["flops"] > 0 and d["ops"] == d["flops"]


@pytest.mark.parametrize("genotype", sorted(DARTS_IMAGENET_PARAMS))
def test_imagenet_fp32_params_equal_reference_darts(genotype, capsys):
    d = _cli_json(capsys, "--genotype", genotype, "--precision", "fp32", "--style", "imagenet",
                  "--init-channels", "48", "--layers", "14", "--num-classes", "1000", "--image-size", "32",
                  "--no-layers")
    assert d["params"] == DARTS_IMAGENET_PARAMS[genotype]
    assert d["input_shape"] == [3, 32, 32]


def test_cifar_params_through_console_script_subprocess():
    exe = Path(sys.executable).with_name("bitnas")
    assert exe.exists()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([str(exe), "summary", "--genotype", "DARTS_V2", "--precision", "fp32", "--init-channels", "36",
                        "--layers", "20", "--num-classes", "10", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["params"] == 3349342
    assert isinstance(d["layers"], list) and d["layers"]
    # per-layer rows add up to the totals (aux head excluded from both)
    assert sum(row["params"] for row in d["layers"]) == d["params"]
    assert sum(row["flops"] for row in d["layers"]) == d["flops"]


def test_binary_darts_structure_has_the_same_parameter_count_as_fp32(capsys):
    """The darts structure only drops ReLUs and binarises convs: same parameters, now split by precision."""
    d = _cli_json(capsys, "--genotype", "DARTS_V2", "--structure", "darts", "--init-channels", "36",
                  "--layers", "20", "--num-classes", "10", "--no-layers", "--image-size", "8")
    assert d["params"] == 3349342
    assert d["params_1bit"] > 0.9 * d["params"]


BINARY_ARGS = ("--init-channels", "8", "--layers", "5", "--num-classes", "10", "--image-size", "16")


SUMMARY_CASES = [(g, "cpnas") for g in GENOTYPES.names()] + [("DARTS_V2", "darts"), ("DARTS_V2", "reactnet")]


@pytest.mark.parametrize("genotype,structure", SUMMARY_CASES)
def test_binary_default_summary_is_consistent(genotype, structure, capsys):
    d = _cli_json(capsys, "--genotype", genotype, "--structure", structure, *BINARY_ARGS, "--no-layers")
    for k in ("params", "params_1bit", "params_32bit", "memory_bits", "memory_bytes", "bops", "flops", "ops"):
        assert k in d
    assert d["ops"] == pytest.approx(d["flops"] + d["bops"] / 64, rel=1e-12)
    assert d["memory_bits"] == d["params_1bit"] + 32 * d["params_32bit"]
    assert d["memory_bytes"] == pytest.approx(d["memory_bits"] / 8)
    assert d["params"] == d["params_1bit"] + d["params_32bit"]
    assert d["bops"] > 0 and d["flops"] > 0

    # independent count on the same network (default precision is binary, aux head built but excluded)
    net = build_network(GENOTYPES.get(genotype), structure=structure, init_channels=8, layers=5, num_classes=10,
                        auxiliary=True)
    p1 = sum(m.weight.numel() for m in net.cells.modules() if isinstance(m, BinaryConv2d) and m.is_binary)
    total = sum(p.numel() for n, p in net.named_parameters() if "auxiliary" not in n)
    assert d["params_1bit"] == p1
    assert d["params_32bit"] == total - p1
    # stem and classifier are full precision
    assert not any(isinstance(m, BinaryConv2d) and m.is_binary for m in net.stem.modules())

    # the fp32 twin has the same convs: its FLOPs are the child's BOPs plus the child's FLOPs
    f = _cli_json(capsys, "--genotype", genotype, "--structure", structure, "--precision", "fp32", *BINARY_ARGS,
                  "--no-layers")
    assert f["bops"] == 0 and f["params_1bit"] == 0
    assert f["flops"] == d["flops"] + d["bops"]


def _hand_conv_macs(k, c_in, c_out, groups, h_out, w_out):
    return k * k * (c_in // groups) * c_out * h_out * w_out


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "in_sequential"])
@pytest.mark.parametrize("c_in,c_out,k,stride,pad,dil,groups,size,h_out", [
    (6, 10, 3, 2, 1, 1, 2, 11, 6),     # (11 + 2 − 3) // 2 + 1 = 6
    (4, 8, 3, 1, 1, 1, 1, 9, 9),
    (8, 8, 5, 1, 4, 2, 8, 10, 10),     # depthwise dilated: (10 + 8 − 9) // 1 + 1 = 10
    (8, 16, 1, 2, 0, 1, 1, 7, 4),      # (7 − 1) // 2 + 1 = 4
])
def test_bops_of_a_single_binary_conv(c_in, c_out, k, stride, pad, dil, groups, size, h_out, wrap):
    layer = BinaryConv2d(c_in, c_out, k, stride, pad, dil, groups, input_quantizer="ste_sign",
                         weight_quantizer="ste_sign")
    model = nn.Sequential(layer) if wrap else layer
    s = summarize(model, (c_in, size, size))
    assert s.bops == _hand_conv_macs(k, c_in, c_out, groups, h_out, h_out)
    assert s.flops == 0
    assert s.params_1bit == c_out * (c_in // groups) * k * k and s.params_32bit == 0
    assert s.ops == s.bops / 64
    assert s.memory_bits == s.params_1bit


def test_flops_of_full_precision_layers_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(5, 4))
    s = summarize(model, (3, 8, 8))
    assert s.bops == 0
    assert s.flops == 3 * 3 * 3 * 5 * 8 * 8 + 5 * 4
    assert s.params_32bit == 3 * 5 * 9 + 2 * 5 + 5 * 4 + 4
    # a BinaryConv2d without weight quantizer is full precision
    s2 = summarize(BinaryConv2d(3, 5, 3, padding=1, input_quantizer="ste_sign"), (3, 8, 8))
    assert s2.bops == 0 and s2.flops == 3 * 3 * 3 * 5 * 8 * 8 and s2.params_1bit == 0


def test_mixed_model_splits_bops_and_flops():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        BinaryConv2d(8, 8, 3, padding=1, input_quantizer="approx_sign", weight_quantizer="ste_sign",
                     weight_scale="learned"),
        nn.BatchNorm2d(8))
    s = summarize(model, (3, 6, 6))
    assert s.flops == 9 * 3 * 8 * 36
    assert s.bops == 9 * 8 * 8 * 36
    assert s.params_1bit == 8 * 8 * 9
    assert s.params_32bit == 3 * 8 * 9 + 8 + 2 * 8  # stem conv, learned α (32-bit), BN affine
    assert s.ops == pytest.approx(s.flops + s.bops / 64)
    assert s.memory_bytes == (s.params_1bit + 32 * s.params_32bit) / 8


def test_fp32_network_has_zero_bops_and_aux_head_is_excluded():
    g = GENOTYPES.get("DARTS_V1")
    with_aux = build_network(g, precision="fp32", init_channels=8, layers=5, auxiliary=True)
    without = build_network(g, precision="fp32", init_channels=8, layers=5, auxiliary=False)
    a, b = summarize(with_aux, (3, 32, 32)), summarize(without, (3, 32, 32))
    assert a.bops == 0 and a.params_1bit == 0
    assert a.params == b.params == sum(p.numel() for p in without.parameters())
    assert a.flops == b.flops
    assert not any("auxiliary" in r.name for r in a.layers)
    text = format_table(a)
    assert "params" in text and "BOPs" in text
    assert with_aux.training  # summarize restores the mode


def test_summary_does_not_depend_on_image_size_for_params(capsys):
    small = _cli_json(capsys, "--genotype", "PDARTS", *BINARY_ARGS, "--no-layers")
    big = _cli_json(capsys, "--genotype", "PDARTS", *BINARY_ARGS, "--image-size", "32", "--no-layers")
    assert small["params"] == big["params"]
    # MACs scale with the number of output pixels: ×4 when the side doubles
    assert big["bops"] == 4 * small["bops"]
