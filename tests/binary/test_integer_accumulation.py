"""Eval-mode BinaryConv2d accumulates sign(x)·sign(W) as integers and scales by α after: equal,
bit for bit, to the float32 rounding of the exact α·Σ±1 (computed here in float64, where every
product and sum is exact), for every quantizer, padding, grouping and stride; training mode keeps
conv(sign(x), α·sign(W)) as before."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitnas.binary import BinaryConv2d
from bitnas.binary.quantizers import SteSign
from bitnas.space.config import OpConfig
from bitnas.space.structures import ResidualBlock

torch.set_num_threads(1)

CASES = [  # (c_in, c_out, k, stride, padding, dilation, groups)
    (4, 6, 3, 1, 1, 1, 1),
    (4, 6, 3, 2, 1, 1, 1),
    (4, 4, 3, 1, 2, 2, 4),   # depthwise dilated
    (6, 6, 5, 2, 4, 2, 6),   # depthwise dilated 5x5 strided
    (4, 8, 1, 2, 0, 1, 1),   # 1x1 strided (the subsampled path on channels-last input)
    (6, 4, 3, 1, 1, 1, 2),   # grouped
]
QUANTIZERS = ["ste_sign", "approx_sign", "swish_sign"]


def pm1(t: torch.Tensor) -> torch.Tensor:
    """Reference sign with sign(0) = +1, written independently of the library."""
    return torch.where(t < 0, -1.0, 1.0).to(t.dtype)


def exact(layer: BinaryConv2d, x: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """float32 rounding of α·conv(sign x, sign W), accumulated exactly in float64."""
    xs = pm1(x.double())
    if layer.pad_value != 0.0:
        ph, pw = layer.padding
        xs = F.pad(xs, (pw, pw, ph, ph), value=layer.pad_value)
        padding = (0, 0)
    else:
        padding = layer.padding
    y = F.conv2d(xs, pm1(layer.weight.detach().double()), None, layer.stride, padding, layer.dilation, layer.groups)
    if alpha is not None:
        y = y * alpha.detach().double().reshape(1, -1, 1, 1)
    return y.float()


def _x(c: int, channels_last: bool) -> torch.Tensor:
    x = torch.randn(3, c, 11, 11, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0, :4] = 0.0  # sign(0) = +1
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _layer(case, **kw) -> BinaryConv2d:
    torch.manual_seed(2)
    c_in, c_out, k, s, p, d, g = case
    return BinaryConv2d(c_in, c_out, k, s, p, d, g, **kw)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("iq", QUANTIZERS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_eval_is_the_exact_alpha_times_integer_sum(case, iq: str, pad_value: float, channels_last: bool) -> None:
    for wq in QUANTIZERS:
        layer = _layer(case, input_quantizer=iq, weight_quantizer=wq, pad_value=pad_value).eval()
        x = _x(case[0], channels_last)
        with torch.no_grad():
            assert torch.equal(layer(x), exact(layer, x, layer.alpha()))


@pytest.mark.parametrize("weight_scale", ["channel", "layer", "learned", "none"])
def test_every_weight_scale(weight_scale: str) -> None:
    layer = _layer(CASES[0], input_quantizer="ste_sign", weight_quantizer="ste_sign", weight_scale=weight_scale)
    if weight_scale == "learned":
        with torch.no_grad():
            layer.scale.mul_(torch.linspace(-1.5, 2.0, 6).view(-1, 1, 1, 1))  # a negative α too
    layer.eval()
    x = _x(4, False)
    with torch.no_grad():
        assert torch.equal(layer(x), exact(layer, x, None if weight_scale == "none" else layer.alpha()))
    assert (layer.integer_kernel()[1] is None) == (weight_scale == "none")


def test_bias_is_added_after_the_scaling() -> None:
    layer = _layer(CASES[0], input_quantizer="ste_sign", weight_quantizer="ste_sign", bias=True).eval()
    x = _x(4, False)
    with torch.no_grad():
        assert torch.equal(layer(x), exact(layer, x, layer.alpha()) + layer.bias.view(1, -1, 1, 1))


def test_a_zero_sum_stays_exactly_zero() -> None:
    """A depthwise 2×4 conv, per channel its own α and eight ±1 products that cancel: float32 sums
    of ±α round partial sums (on this machine's oneDNN some channels end at ±1 ulp, not 0); the
    integer accumulation gives exactly 0 in every channel."""
    c = 512
    g = torch.Generator().manual_seed(0)
    layer = BinaryConv2d(c, c, (2, 4), groups=c, input_quantizer="ste_sign", weight_quantizer="ste_sign",
                         weight_scale="learned").eval()
    signs = torch.stack([torch.tensor([1.0, 1, 1, 1, -1, -1, -1, -1])[torch.randperm(8, generator=g)]
                         for _ in range(c)]).view(c, 1, 2, 4)
    with torch.no_grad():
        layer.weight.copy_(signs)
        layer.scale.copy_(torch.rand(c, 1, 1, 1, generator=g) * 2)
        y = layer(torch.ones(1, c, 2, 4))
    assert torch.count_nonzero(y).item() == 0


def test_training_mode_keeps_the_scaled_kernel_bitwise() -> None:
    layer = _layer(CASES[2], input_quantizer="approx_sign", weight_quantizer="ste_sign", pad_value=1.0)
    x = _x(4, True)
    assert layer.training and layer.integer_kernel() is None
    xs = F.pad(pm1(x), (2, 2, 2, 2), value=1.0)
    want = F.conv2d(xs, layer.alpha() * pm1(layer.weight.detach()), None, 1, 0, 2, 4)
    assert torch.equal(layer(x).detach(), want)


def test_real_input_or_unknown_quantizers_keep_the_kernel() -> None:
    x = _x(4, False)
    real_in = _layer(CASES[0], input_quantizer=None, weight_quantizer="ste_sign").eval()
    assert real_in.integer_kernel() is None
    with torch.no_grad():
        assert torch.equal(real_in(x), F.conv2d(x, real_in.binary_weight(), None, 1, 1))
    custom = _layer(CASES[0], input_quantizer=torch.tanh, weight_quantizer="ste_sign").eval()
    assert custom.integer_kernel() is None
    assert _layer(CASES[0], input_quantizer="ste_sign", weight_quantizer=torch.tanh).eval().integer_kernel() is None
    assert _layer(CASES[0], input_quantizer="ste_sign", weight_quantizer=None).eval().integer_kernel() is None


def test_rsign_input_is_taken_as_signed() -> None:
    """ReActNet: the RSign threshold sits before the sign, so the conv's input is ±1."""
    cfg = OpConfig(precision="binary")
    block = ResidualBlock(cfg, 4, 4, 3, 1, 1, 1, 1, bn_in=False, bn_out=False, residual=False, act="none", rsign=True)
    with torch.no_grad():
        block.pre.bias.copy_(torch.tensor([0.3, -0.2, 0.0, 1.1]).view(1, -1, 1, 1))
    block.eval()
    conv = block.conv
    assert conv.input_quantizer is None and conv.signed_input and conv.integer_kernel() is not None
    x = _x(4, False)
    with torch.no_grad():
        got = block(x)
    assert torch.equal(got, exact(conv, x + block.pre.bias, conv.alpha()))


def test_frozen_kernel_is_split_when_it_factorises() -> None:
    layer = _layer(CASES[0], input_quantizer="ste_sign", weight_quantizer=SteSign(), weight_scale="layer")
    x = _x(4, False)
    layer.freeze()
    layer.eval()
    signs, alpha = layer.integer_kernel()
    assert torch.equal(signs, pm1(layer.weight.detach())) and torch.equal(alpha.flatten(), layer.alpha().flatten())
    with torch.no_grad():
        layer.weight.mul_(-1)  # the frozen kernel, not W, is used
        assert torch.equal(layer(x), -exact(layer, x, alpha))
    lumpy = torch.randn(6, 4, 3, 3)  # not α·±1 per channel: used as it is
    layer.freeze(lumpy)
    assert layer.integer_kernel() is None
    with torch.no_grad():
        assert torch.equal(layer(x), F.conv2d(pm1(x), lumpy, None, 1, 1))
    layer.unfreeze()
    assert layer.frozen_signs is None and layer.integer_kernel() is not None
