"""The channels-last fast path of bitnas' BatchNorm2d gives nn.BatchNorm2d's results exactly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bitnas.space.batchnorm import BatchNorm2d


@pytest.mark.parametrize("channels", [4, 8, 16])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_matches_torch_batchnorm_in_both_memory_formats(channels: int, fmt: torch.memory_format) -> None:
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(channels), nn.BatchNorm2d(channels)
    ref.load_state_dict(ours.state_dict())
    x = (torch.randn(8, channels, 6, 6) * 3 + 1).contiguous(memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(8, channels, 6, 6)
    ya, yb = ours(xa), ref(xb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert ya.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))
