"""BinaryConv2d against an independent F.conv2d(sign(x), α·sign(W)) and its clipped-STE gradient."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitnas.binary import BinaryConv2d, binarized_layers, is_binary_model
from bitnas.errors import ConfigError

torch.set_num_threads(1)


def pm1(t: torch.Tensor) -> torch.Tensor:
    """Reference sign with sign(0) = +1, written independently of the library."""
    out = torch.ones_like(t)
    out[t < 0] = -1.0
    return out


def _input(c: int, size: int = 9, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, c, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x[0, 0, 0, :3] = 0.0  # exact zeros must become +1
    return x


CASES = [  # (c_in, c_out, k, stride, padding, dilation, groups)
    (4, 6, 3, 1, 1, 1, 1),
    (4, 6, 3, 2, 1, 1, 1),
    (4, 4, 5, 1, 2, 1, 1),
    (4, 4, 3, 1, 2, 2, 4),   # depthwise dilated
    (6, 6, 5, 2, 4, 2, 6),   # depthwise dilated 5x5 strided
    (4, 8, 1, 2, 0, 1, 1),   # 1x1 strided (factorized reduce)
    (6, 4, 3, 1, 1, 1, 2),   # grouped
    (4, 6, (1, 7), 1, (0, 3), 1, 1),  # asymmetric kernel
]


def _make(case, **kw) -> BinaryConv2d:
    c_in, c_out, k, s, p, d, g = case
    torch.manual_seed(3)
    return BinaryConv2d(c_in, c_out, k, s, p, d, g, **kw).double()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_forward_matches_independent_binary_conv(case):
    layer = _make(case, input_quantizer="ste_sign", weight_quantizer="ste_sign")
    x = _input(case[0])
    W = layer.weight.detach()
    alpha = W.abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    ref = F.conv2d(pm1(x), alpha * pm1(W), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
    # reconstructed kernel: one magnitude per output channel, equal to mean|W|
    bw = layer.binary_weight().detach()
    torch.testing.assert_close(bw, alpha * pm1(W))
    assert layer.is_binary


@pytest.mark.parametrize("case", CASES[:3] + CASES[6:7], ids=lambda c: "-".join(map(str, c)))
def test_weight_scale_variants(case):
    x = _input(case[0])
    # one α for the whole layer (PCNN)
    layer = _make(case, input_quantizer="ste_sign", weight_quantizer="ste_sign", weight_scale="layer")
    W = layer.weight.detach()
    a = W.abs().mean()
    ref = F.conv2d(pm1(x), a * pm1(W), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    torch.testing.assert_close(layer(x), ref)
    # no scale: plain ±1 kernel
    layer = _make(case, input_quantizer="ste_sign", weight_quantizer="ste_sign", weight_scale="none")
    W = layer.weight.detach()
    ref = F.conv2d(pm1(x), pm1(W), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    torch.testing.assert_close(layer(x), ref)
    assert set(layer.binary_weight().detach().unique().tolist()) <= {-1.0, 1.0}


def test_learned_scale_is_a_parameter_initialised_from_mean_abs_and_trained():
    layer = _make(CASES[0], input_quantizer="ste_sign", weight_quantizer="ste_sign", weight_scale="learned")
    W = layer.weight.detach()
    assert isinstance(layer.scale, nn.Parameter) and layer.scale.shape == (6, 1, 1, 1)
    torch.testing.assert_close(layer.scale.detach(), W.abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1))
    with torch.no_grad():
        layer.scale.mul_(torch.arange(1, 7, dtype=torch.float64).view(-1, 1, 1, 1))
    x = _input(4)
    ref = F.conv2d(pm1(x), layer.scale.detach() * pm1(W), None, 1, 1)
    out = layer(x)
    torch.testing.assert_close(out, ref)
    r = torch.randn_like(out)
    (out * r).sum().backward()
    assert layer.scale.grad is not None and layer.scale.grad.abs().sum() > 0
    # d/dscale_o = sum over the output channel o of r * conv(sign x, sign W)_o
    unit = F.conv2d(pm1(x), pm1(W), None, 1, 1)
    torch.testing.assert_close(layer.scale.grad.view(-1), (unit * r).sum(dim=(0, 2, 3)))
    assert "scale" in dict(layer.named_parameters())


def test_unknown_weight_scale_raises():
    with pytest.raises(ConfigError, match="weight_scale"):
        BinaryConv2d(2, 2, 3, weight_quantizer="ste_sign", weight_scale="per_pixel")  # type: ignore[arg-type]


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[7]], ids=lambda c: "-".join(map(str, c)))
def test_pad_value_one_equals_padding_the_pm1_input_with_ones(case):
    layer = _make(case, input_quantizer="ste_sign", weight_quantizer="ste_sign", pad_value=1.0)
    x = _input(case[0])
    ph, pw = layer.padding
    xb = F.pad(pm1(x), (pw, pw, ph, ph), value=1.0)
    assert set(xb.unique().tolist()) == {-1.0, 1.0}
    W = layer.weight.detach()
    alpha = W.abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    ref = F.conv2d(xb, alpha * pm1(W), None, layer.stride, 0, layer.dilation, layer.groups)
    out = layer(x)
    torch.testing.assert_close(out, ref)
    # and it differs from zero padding at the border
    zero_pad = F.conv2d(pm1(x), alpha * pm1(W), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    assert not torch.allclose(out, zero_pad)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_full_precision_when_quantizers_none_equals_nn_conv2d(case):
    c_in, c_out, k, s, p, d, g = case
    layer = BinaryConv2d(c_in, c_out, k, s, p, d, g).double()
    ref = nn.Conv2d(c_in, c_out, k, s, p, d, g, bias=False).double()
    ref.weight.data.copy_(layer.weight.data)
    x = _input(c_in).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    out, out_ref = layer(x), ref(x2)
    torch.testing.assert_close(out, out_ref)
    r = torch.randn_like(out)
    (out * r).sum().backward()
    (out_ref * r).sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    torch.testing.assert_close(x.grad, x2.grad)
    assert not layer.is_binary
    assert layer.binary_weight() is layer.weight


def test_binary_input_only_keeps_real_weights():
    layer = _make(CASES[0], input_quantizer="approx_sign")
    x = _input(4)
    ref = F.conv2d(pm1(x), layer.weight.detach(), None, 1, 1)
    torch.testing.assert_close(layer(x), ref)
    assert not layer.is_binary


@pytest.mark.parametrize("weight_scale", ["channel", "layer", "none"])
def test_weight_gradient_is_clipped_ste_times_alpha(weight_scale):
    torch.manual_seed(0)
    layer = BinaryConv2d(4, 6, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign",
                         weight_scale=weight_scale).double()
    with torch.no_grad():  # some latent weights outside the clip range
        layer.weight[0, 0] = 1.5
        layer.weight[1, :, 0, 0] = -2.0
        layer.weight[2, 1, 1, 1] = 1.0  # on the boundary: gradient passes
    W = layer.weight.detach().clone()
    if weight_scale == "channel":
        alpha = W.abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    elif weight_scale == "layer":
        alpha = W.abs().mean().expand(6, 1, 1, 1)
    else:
        alpha = torch.ones(6, 1, 1, 1, dtype=W.dtype)
    x = _input(4)
    out = layer(x)
    r = torch.randn_like(out)
    (out * r).sum().backward()
    # independent: gradient w.r.t. the reconstructed kernel Wb, then chain α · 1{|W| ≤ 1}
    Wb = (alpha * pm1(W)).requires_grad_(True)
    (F.conv2d(pm1(x), Wb, None, 1, 1) * r).sum().backward()
    expected = Wb.grad * alpha * (W.abs() <= 1).to(W.dtype)
    torch.testing.assert_close(layer.weight.grad, expected)
    assert (layer.weight.grad[0, 0] == 0).all()
    assert (layer.weight.grad[1, :, 0, 0] == 0).all()
    assert layer.weight.grad[2, 1, 1, 1] != 0


def test_input_gradient_is_clipped_ste_of_input():
    layer = _make(CASES[0], input_quantizer="ste_sign", weight_quantizer="ste_sign")
    x = (_input(4) * 1.5).requires_grad_(True)
    out = layer(x)
    r = torch.randn_like(out)
    (out * r).sum().backward()
    xb = pm1(x.detach()).requires_grad_(True)
    (F.conv2d(xb, layer.binary_weight().detach(), None, 1, 1) * r).sum().backward()
    torch.testing.assert_close(x.grad, xb.grad * (x.detach().abs() <= 1).to(x.dtype))
    assert (x.grad[x.detach().abs() > 1] == 0).all()


def test_binarized_layers_finds_exactly_the_binary_convs():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("fp_binconv", BinaryConv2d(4, 4, 3, padding=1))  # no quantizer: fp32
    model.add_module("act_only", BinaryConv2d(4, 4, 1, input_quantizer="ste_sign"))  # fp weights
    inner = nn.Sequential()
    inner.add_module("b1", BinaryConv2d(4, 4, 3, padding=1, input_quantizer="ste_sign", weight_quantizer="ste_sign"))
    inner.add_module("bn", nn.BatchNorm2d(4))
    inner.add_module("b2", BinaryConv2d(4, 4, 1, weight_quantizer="ste_sign"))
    model.add_module("block", inner)
    model.add_module("head", nn.Linear(4, 2))
    found = binarized_layers(model)
    assert [n for n, _ in found] == ["block.b1", "block.b2"]
    assert all(m is dict(model.named_modules())[n] for n, m in found)
    assert is_binary_model(model)
    assert binarized_layers(nn.Sequential(nn.Conv2d(1, 1, 1), BinaryConv2d(1, 1, 1))) == []
    assert not is_binary_model(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_extra_repr_names_quantizers():
    r = repr(BinaryConv2d(2, 2, 3, input_quantizer="approx_sign", weight_quantizer="ste_sign"))
    assert "approx_sign" in r and "ste_sign" in r


def test_freeze_fixes_the_kernel_until_unfrozen() -> None:
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, padding=1, input_quantizer="ste_sign", weight_quantizer="ste_sign")
    x = torch.randn(2, 3, 5, 5)
    before = conv(x)
    conv.freeze()
    assert "frozen_kernel" not in conv.state_dict()
    with torch.no_grad():
        conv.weight.mul_(-1)
    assert torch.equal(conv(x), before)
    conv.unfreeze()
    torch.testing.assert_close(conv(x), -before)
