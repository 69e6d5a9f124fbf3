"""Quantizers: sign forward with sign(0) = +1, surrogate gradients against their closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bitnas.binary import quantizers as Q
from bitnas.binary.quantizers import QUANTIZERS, ApproxSign, Quantizer, SteSign, SwishSign, get
from bitnas.errors import ConfigError

torch.set_num_threads(1)

GRID = [-20.0, -2.0, -1.5, -1.0, -0.75, -0.5, -0.25, -0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 20.0]


def _grad(q: Quantizer, xs: list[float], dtype=torch.float64) -> tuple[torch.Tensor, np.ndarray]:
    """Output and d(sum g·q(x))/dx divided by a random upstream g (checks the chain rule too)."""
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    g = torch.rand(len(xs), dtype=dtype, generator=torch.Generator().manual_seed(0)) + 0.5
    y = q(x)
    (y * g).sum().backward()
    return y.detach(), (x.grad / g).numpy()


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("name", QUANTIZERS.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_is_sign_with_zero_positive(name, dtype):
    q = get(name)
    x = torch.tensor(GRID + [1e-30, -1e-30], dtype=dtype)
    y = q(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert set(y.tolist()) <= {-1.0, 1.0}
    # exact zeros (both +0 and -0) map to +1, never 0
    assert y[x == 0].eq(1).all() and int((x == 0).sum()) == 2
    expected = [1.0 if v >= 0 else -1.0 for v in x.tolist()]
    assert y.tolist() == expected


@pytest.mark.parametrize("name", QUANTIZERS.names())
def test_forward_on_random_tensor_with_zeros(name):
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    x[0, 0] = 0.0
    y = get(name)(x)
    assert torch.equal(y.abs(), torch.ones_like(y))
    assert (y[0, 0] == 1).all()
    assert torch.equal(y, torch.where(x < 0, -1.0, 1.0))


def test_module_sign_helper():
    assert Q.sign(torch.tensor([0.0, -0.0, -3.0, 2.0])).tolist() == [1.0, 1.0, -1.0, 1.0]


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("clip", [1.0, 0.5, 1.25])
def test_ste_sign_gradient_is_clipped_identity(clip):
    _, grad = _grad(SteSign(clip), GRID)
    expected = np.array([1.0 if abs(v) <= clip else 0.0 for v in GRID])
    np.testing.assert_allclose(grad, expected, atol=1e-12)
    # the boundary |x| == clip passes the gradient
    if clip in GRID:
        assert grad[GRID.index(clip)] == 1.0 and grad[GRID.index(-clip)] == 1.0


def test_ste_sign_default_clip_is_one():
    assert get("ste_sign").clip == 1.0
    _, grad = _grad(get("ste_sign"), [-1.5, -1.0, 0.0, 0.5, 1.0, 1.5])
    assert grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_approx_sign_gradient_closed_form():
    _, grad = _grad(ApproxSign(), GRID)
    expected = np.array([max(0.0, 2.0 - 2.0 * abs(v)) for v in GRID])
    np.testing.assert_allclose(grad, expected, atol=1e-12)
    # hand values: peak 2 at 0, 1 at ±0.5, 0 at and beyond ±1
    for v, want in [(0.0, 2.0), (0.5, 1.0), (-0.5, 1.0), (1.0, 0.0), (-1.0, 0.0), (1.5, 0.0), (-1.5, 0.0)]:
        assert grad[GRID.index(v)] == pytest.approx(want)


def _bireal_poly(x: float) -> float:
    """Bi-Real's piecewise polynomial: -1 | 2x + x² | 2x - x² | +1 with breaks at -1, 0, 1."""
    if x < -1:
        return -1.0
    if x < 0:
        return 2 * x + x * x
    if x < 1:
        return 2 * x - x * x
    return 1.0


def test_approx_sign_gradient_is_derivative_of_bireal_polynomial():
    kinks = (-1.0, 0.0, 1.0)
    xs = [v for v in np.linspace(-1.9, 1.9, 77).tolist() if all(abs(v - k) > 1e-3 for k in kinks)]
    _, grad = _grad(ApproxSign(), xs)
    h = 1e-6
    numeric = np.array([(_bireal_poly(v + h) - _bireal_poly(v - h)) / (2 * h) for v in xs])
    np.testing.assert_allclose(grad, numeric, atol=1e-5)


@pytest.mark.parametrize("beta", [5.0, 2.0, 10.0])
def test_swish_sign_gradient_closed_form(beta):
    _, grad = _grad(SwishSign(beta), GRID)
    expected = []
    for v in GRID:
        bx = beta * v
        if abs(bx) > 300:  # cosh overflows; the closed form tends to 0
            expected.append(0.0)
        else:
            expected.append(beta * (2 - bx * math.tanh(bx / 2)) / (1 + math.cosh(bx)))
    np.testing.assert_allclose(grad, np.array(expected), rtol=1e-9, atol=1e-12)
    # at 0 the surrogate derivative is β (2·β/2)
    assert grad[GRID.index(0.0)] == pytest.approx(beta)


@pytest.mark.parametrize("beta", [5.0, 2.0])
def test_swish_sign_gradient_is_derivative_of_bnnplus_approximation(beta):
    """Independent check: autograd derivative of 2σ(βx)(1 + βx(1 − σ(βx))) − 1 (BNN+)."""
    xs = torch.linspace(-2.0, 2.0, 81, dtype=torch.float64)
    smooth = xs.clone().requires_grad_(True)
    s = torch.sigmoid(beta * smooth)
    (2 * s * (1 + beta * smooth * (1 - s)) - 1).sum().backward()
    _, grad = _grad(SwishSign(beta), xs.tolist())
    np.testing.assert_allclose(grad, smooth.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_swish_sign_default_beta_is_five():
    assert get("swish_sign").beta == 5.0


@pytest.mark.parametrize("name", QUANTIZERS.names())
def test_gradients_are_finite_in_float32(name):
    x = torch.tensor(GRID + [100.0, -100.0], dtype=torch.float32, requires_grad=True)
    get(name)(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[GRID.index(0.0)] > 0


# ---------------------------------------------------------------- registry get()


@pytest.mark.parametrize("name", QUANTIZERS.names())
def test_get_by_name_builds_registered_class(name):
    q = get(name)
    assert isinstance(q, QUANTIZERS.get(name)) and isinstance(q, Quantizer)
    assert q.name == name
    assert get(name) is not q  # a fresh instance each time (no shared state)


def test_get_instance_returns_same_object():
    q = SteSign(0.3)
    assert get(q) is q
    a = ApproxSign()
    assert get(a) is a


def test_get_callable_is_wrapped():
    calls = []

    def my_sign(x):
        calls.append(1)
        return torch.where(x > 0.5, 1.0, -1.0)

    q = get(my_sign)
    assert isinstance(q, torch.nn.Module) and isinstance(q, Quantizer)
    out = q(torch.tensor([0.0, 1.0]))
    assert out.tolist() == [-1.0, 1.0] and calls == [1]
    assert q.name == "my_sign"
    # lives in a module tree
    holder = torch.nn.Sequential(q)
    assert holder(torch.tensor([2.0])).tolist() == [1.0]


@pytest.mark.parametrize("ident", [None, "none", "fp32"])
def test_get_full_precision_is_none(ident):
    assert get(ident) is None


def test_get_unknown_name_lists_known_and_suggests():
    with pytest.raises(ConfigError) as ei:
        get("ste_sgn")
    msg = str(ei.value)
    assert "ste_sgn" in msg
    assert "did you mean 'ste_sign'" in msg
    for n in QUANTIZERS.names():
        assert n in msg


def test_get_unknown_name_without_close_match_still_lists_known():
    with pytest.raises(ConfigError) as ei:
        get("zzzzqqq")
    msg = str(ei.value)
    assert "did you mean" not in msg
    assert all(n in msg for n in QUANTIZERS.names())


def test_get_rejects_non_callable_object():
    with pytest.raises(ConfigError) as ei:
        get(42)  # type: ignore[arg-type]
    assert "quantizer" in str(ei.value)
