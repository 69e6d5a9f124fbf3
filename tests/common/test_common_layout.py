"""Layout helpers: spatial slicing and relayout give plain slicing's values and gradients, in the
input's memory format both ways."""
from __future__ import annotations

import pytest
import torch

from bitnas.common.layout import is_channels_last, relayout, spatial_slice, spatial_slices, use_channels_last

CL, NCHW = torch.channels_last, torch.contiguous_format


@pytest.mark.parametrize("fmt", [CL, NCHW], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("start,step", [((0, 0), (2, 2)), ((1, 1), (1, 1)), ((1, 0), (2, 3))])
@pytest.mark.parametrize("size", [7, 8])
def test_spatial_slice_equals_slicing(fmt, start, step, size):
    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size + 1, dtype=torch.float64).contiguous(memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (h0, w0), (sh, sw) = start, step
    ya, yb = spatial_slice(xa, start, step), xb[:, :, h0::sh, w0::sw]
    assert torch.equal(ya, yb)
    g = torch.randn(yb.shape, dtype=torch.float64)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    if fmt is CL:
        assert is_channels_last(ya) and is_channels_last(xa.grad)


def test_relayout_sets_value_and_gradient_formats():
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    y = relayout(x, CL, NCHW)
    assert torch.equal(y, x) and is_channels_last(y)
    g = torch.randn(2, 6, 5, 5).contiguous(memory_format=CL)
    (grad,) = torch.autograd.grad(y, x, g)
    assert torch.equal(grad, g) and grad.is_contiguous()
    z = relayout(y, CL, CL)
    (grad,) = torch.autograd.grad(z, y, torch.randn(2, 6, 5, 5))
    assert is_channels_last(grad)


def test_use_channels_last_auto_is_cpu_only():
    x = torch.zeros(1)
    assert use_channels_last(None, x) is True
    assert use_channels_last(False, x) is False and use_channels_last(True, x) is True
    assert use_channels_last(None, torch.zeros(1, device="meta")) is False


@pytest.mark.parametrize("fmt", [CL, NCHW], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("other_first", [True, False])
def test_spatial_slices_equal_one_slice_each_bitwise(fmt, size, other_first):
    """The two stride-2 grids of a factorised reduce taken by one `spatial_slices`: the values,
    and bit for bit the gradient of x autograd sums with another consumer's (signed zeros
    included), are those of two `spatial_slice` calls."""
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(3, 5, size, size + 1, generator=gen).contiguous(memory_format=fmt)
    starts, step = ((0, 0), (1, 1)), (2, 2)
    shapes = [x[:, :, h0::2, w0::2].shape for h0, w0 in starts]
    gs = [torch.randn(s, generator=gen).masked_fill_(torch.rand(s, generator=gen) < 0.4, -0.0) for s in shapes]
    gp = torch.randn(x.shape, generator=gen).masked_fill_(torch.rand(x.shape, generator=gen) < 0.4, -0.0)
    gp[:, :, ::2, ::2] = -0.0  # where the grids' gradients are −0 too: the sign of a zero sum shows

    def grad_of_x(split: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        xr = x.clone().requires_grad_()
        other = xr * 1.0
        ys = [spatial_slice(xr, s, step) for s in starts] if split else list(spatial_slices(xr, starts, step))
        outs = [other, *ys] if other_first else [*ys, other]
        grads = [gp, *gs] if other_first else [*gs, gp]
        torch.autograd.backward(outs, grads)
        return xr.grad, ys

    (want, ys_want), (got, ys_got) = grad_of_x(True), grad_of_x(False)
    assert all(torch.equal(u, v) for u, v in zip(ys_got, ys_want))
    assert torch.equal(got.contiguous().view(torch.int32), want.contiguous().view(torch.int32))
    if fmt is CL:
        assert is_channels_last(got) and all(is_channels_last(y) for y in ys_got)
