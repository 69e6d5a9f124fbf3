"""The strided-1×1 workaround (`bitnas.common.conv`) and the oneDNN fault it avoids.

The fault (docs/onednn-1x1-stride2-crash.md): oneDNN's `jit_1x1:avx2` weight gradient of a
stride-2 1×1 convolution on a channels-last input with 2–7 channels corrupts the heap. The
subprocess tests below force the AVX2 kernels (`ONEDNN_MAX_CPU_ISA=AVX2`), so they exercise
the faulty kernel on any x86 CPU, AVX-512 machines included.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from bitnas.common.conv import conv2d

REPRO = """
import torch, torch.nn.functional as F
torch.set_num_threads(1)
for _ in range(300):
    x = torch.randn(8, {c}, 28, 28).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(2, {c}, 1, 1, requires_grad=True)
    y = {conv}(x, w, None, (2, 2), (0, 0), (1, 1), 1)
    torch.autograd.grad(y.sum(), [x, w])
print("done")
"""


def _run(code: str, isa: str = "AVX2", timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, OMP_NUM_THREADS="1")
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # the fault sometimes hangs instead of crashing
        return subprocess.CompletedProcess([], -999, "", "timed out")


@pytest.mark.parametrize("stride", [(2, 2), (2, 1), (3, 3)])
@pytest.mark.parametrize("padding", [(0, 0), (1, 0)])
def test_strided_1x1_equals_conv2d(stride, padding):
    """Values and both gradients are those of F.conv2d (float64: exact up to summation order)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 11, 10, dtype=torch.float64)
    w = torch.randn(4, 5, 1, 1, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    outs = []
    for fn in (F.conv2d, conv2d):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        y = fn(xi, wi, bi, stride, padding, (1, 1), 1)
        g = torch.autograd.grad(y, [xi, wi, bi], torch.ones_like(y) * torch.arange(y.numel()).view_as(y))
        outs.append((y, *g))
    for ref, got in zip(*outs):
        assert ref.shape == got.shape
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


CHANNELS = [2, 3, 4, 7]


@pytest.fixture(scope="module")
def reproductions_under_avx2() -> subprocess.CompletedProcess:
    """The reproduction through bitnas' conv2d for every channel count of CHANNELS, one after the
    other in one AVX2 process (one interpreter start); each prints `done` and its count."""
    code = "from bitnas.common.conv import conv2d\n" + "".join(
        REPRO.format(c=c, conv="conv2d").replace('print("done")', f'print("done", {c})') for c in CHANNELS)
    return _run(code, timeout=120 * len(CHANNELS))


@pytest.mark.parametrize("channels", CHANNELS)
def test_reproduction_shapes_run_under_avx2(channels, reproductions_under_avx2):
    """The reproduction's convolutions through bitnas' conv2d: no crash with the AVX2 kernels."""
    r = reproductions_under_avx2
    assert f"done {channels}" in r.stdout.splitlines(), r.stderr[-2000:]
    assert r.returncode == 0, r.stderr[-2000:]


def test_factorized_reduce_backward_under_avx2():
    """The op that met the fault in a search (binary and fp32 factorised reduce, few channels)."""
    code = """
    import torch
    from bitnas.space.config import OpConfig
    from bitnas.space.operations import FactorizedReduce
    torch.set_num_threads(1)
    for binary in (False, True):
        cfg = OpConfig(precision="binary" if binary else "fp32")
        op = FactorizedReduce(4, 4, cfg)
        for _ in range(200):
            x = torch.randn(8, 4, 28, 28).contiguous(memory_format=torch.channels_last).requires_grad_()
            torch.autograd.grad(op(x).square().sum(), [x, *op.parameters()])
    print("done")
    """
    r = _run(code)
    assert r.returncode == 0 and "done" in r.stdout, r.stderr[-2000:]


def test_raw_torch_pattern_still_faulty():
    """Documents the upstream fault: the plain F.conv2d reproduction fails under AVX2. When a
    torch release fixes it this skips, and bitnas.common.conv's subsampling can be retired."""
    r = _run(REPRO.format(c=2, conv="torch.nn.functional.conv2d"), timeout=60)
    if r.returncode == 0:
        pytest.skip(f"torch {torch.__version__} no longer faults on the reproduction")
    assert "done" not in r.stdout


SWEEP = """
import itertools, torch
from bitnas.common.conv import conv2d
torch.manual_seed(0); torch.set_num_threads(1)
bad = []
for k, s, d, cin, dw, h in itertools.product((1, 3, 5), (1, 2), (1, 2), (1, 2, 3, 4, 5, 8, 12),
                                             (False, True), (28, 14, 7)):
    if (k == 1 and d == 2) or (dw and cin == 1):
        continue
    g = cin if dw else 1
    cout = cin if dw else max(1, cin // 2)
    pad = d * (k - 1) // 2
    for _ in range(3):
        x = torch.randn(4, cin, h, h, dtype=torch.float64)
        w = torch.randn(cout, cin // g, k, k, dtype=torch.float64)
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        yr = torch.nn.functional.conv2d(xr, wr, None, s, pad, d, g)
        go = torch.randn_like(yr)
        ref = (yr, *torch.autograd.grad(yr, [xr, wr], go))
        xf = x.float().contiguous(memory_format=torch.channels_last).requires_grad_()
        wf = w.float().requires_grad_()
        y = conv2d(xf, wf, None, (s, s), (pad, pad), (d, d), g)
        got = (y, *torch.autograd.grad(y, [xf, wf], go.float().contiguous(memory_format=torch.channels_last)))
        err = max(float((a.double() - b).abs().max() / (1 + b.abs().max())) for a, b in zip(got, ref))
        if err > 1e-4:
            bad.append((k, s, d, cin, dw, h, err))
            break
print("BAD", bad)
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["AVX2", "SSE41"])
def test_conv_sweep_under_isa(isa):
    """Every conv shape family the spaces build (kernel 1/3/5, stride 1/2, dilation 1/2, dense and
    depthwise, few channels, channels-last): values and gradients match float64, no crash."""
    r = _run(SWEEP, isa=isa, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "BAD []" in r.stdout, r.stdout[-2000:]
