"""The fused C++ passes (`bitnas.binary._fused`) are bitwise the torch expressions they replace."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitnas.binary import fused

pytestmark = pytest.mark.skipif(fused.extension() is None, reason="bitnas.binary._fused not built")

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.0000001, 0.99999994, float("nan"), float("inf"), -float("inf"),
           1e-45, -1e-45, 3e38, -3e38, 0.7, 0.70000005]


@pytest.fixture
def torch_path(monkeypatch):
    """Call a `fused` function with the extension switched off (the torch expressions)."""
    def run(fn, *args):
        with monkeypatch.context() as m:
            m.setattr(fused, "extension", lambda: None)
            return fn(*args)
    return run


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def operands(shape, fmt, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 1.2
    g = torch.randn(shape, generator=gen) * 3
    n = min(len(SPECIAL), x.numel())
    x.view(-1)[:n] = torch.tensor(SPECIAL[:n])
    if x.numel() >= 2 * n:
        g.view(-1)[n:2 * n] = torch.tensor(SPECIAL[:n])
    return x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt)


@pytest.mark.parametrize("shape,fmt", [((64, 8, 28, 28), torch.contiguous_format), ((64, 8, 28, 28), torch.channels_last),
                                       ((3, 5, 7, 9), torch.channels_last), ((17,), torch.contiguous_format),
                                       ((8, 8, 1, 1), torch.contiguous_format)])
@pytest.mark.parametrize("name,extra", [("sign", ()), ("approx_sign_grad", ()), ("ste_sign_grad", (1.0,)),
                                        ("ste_sign_grad", (0.7,))])
def test_fused_equals_torch_expression(torch_path, shape, fmt, name, extra):
    x, g = operands(shape, fmt)
    fn = getattr(fused, name)
    args = (x,) if name == "sign" else (x, g, *extra)
    got, want = fn(*args), torch_path(fn, *args)
    assert got.stride() == want.stride()
    assert torch.equal(bits(got), bits(want))


def test_mixed_layouts_fall_back_to_torch(torch_path):
    x, g = operands((4, 8, 5, 5), torch.channels_last)
    g = g.contiguous()
    assert not fused._fusable(x, g)
    assert torch.equal(bits(fused.approx_sign_grad(x, g)), bits(torch_path(fused.approx_sign_grad, x, g)))


def test_weight_gradient_strides_of_size_one_dims_are_fused():
    w = torch.randn(16, 16, 1, 1)
    g = torch.randn(16, 1, 1, 1).expand(16, 16, 1, 1).clone(memory_format=torch.channels_last)
    assert g.stride() != w.stride() and fused._fusable(w, g)


@pytest.mark.parametrize("activation", ["approx_sign", "ste_sign"])
def test_training_steps_bitwise_with_and_without_extension(torch_path, activation):
    """A few Adam steps of a small 1-bit Bi-Real network: same losses and weights, bit for bit."""
    from bitnas.nets import build_network
    from bitnas.space.genotypes import load_genotype

    def run():
        torch.manual_seed(0)
        net = build_network(load_genotype("DARTS_V2"), structure="bireal", activation=activation, init_channels=8,
                            layers=3, num_classes=10, in_channels=1)
        opt = torch.optim.Adam(net.parameters(), 5e-3)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(3):
            x, y = torch.randn(16, 1, 28, 28, generator=gen), torch.randint(10, (16,), generator=gen)
            loss = F.cross_entropy(net(x)[0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses), [p.detach().clone() for p in net.parameters()]

    (la, pa), (lb, pb) = run(), torch_path(run)
    assert torch.equal(bits(la), bits(lb))
    assert all(torch.equal(bits(u), bits(v)) for u, v in zip(pa, pb))
