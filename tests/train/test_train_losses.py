"""CP-NAS kernel loss, centre loss and distillation on hand-built inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitnas.binary import BinaryConv2d
from bitnas.errors import ConfigError
from bitnas.nets import build_network
from bitnas.space.genotypes import load_genotype
from bitnas.train.losses import CenterLoss, KernelLoss, distillation_loss


class Pair(nn.Module):
    """Two convs under fixed names, binary (child) or full precision (parent)."""

    def __init__(self, binary: bool, second_shape: tuple[int, int] = (3, 2)) -> None:
        super().__init__()
        q = "ste_sign" if binary else None
        self.a = BinaryConv2d(2, 2, 1, input_quantizer=q, weight_quantizer=q)
        self.b = BinaryConv2d(second_shape[1], second_shape[0], 1, input_quantizer=q, weight_quantizer=q)


def _set(conv: nn.Conv2d, rows: list[list[float]]) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(rows).view_as(conv.weight))


@pytest.fixture
def pair() -> tuple[Pair, Pair]:
    child, parent = Pair(True), Pair(False)
    _set(child.a, [[0.5, -0.25], [0.0, -1.0]])          # α = (0.375, 0.5)
    _set(child.b, [[0.2, 0.2], [-0.4, 0.8], [1.0, -3.0]])  # α = (0.2, 0.6, 2.0)
    _set(parent.a, [[1.0, 0.0], [0.5, -0.5]])
    _set(parent.b, [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    return child, parent


def test_kernel_loss_parent_closed_form(pair: tuple[Pair, Pair]) -> None:
    child, parent = pair
    # Ĥ = α·sign(W) with sign(0) = +1: a → [[.375, -.375], [.5, -.5]]; b → [[.2, .2], [-.6, .6], [2, -2]]
    mse_a = ((1 - .375) ** 2 + (0 + .375) ** 2 + (.5 - .5) ** 2 + (-.5 + .5) ** 2) / 4
    mse_b = (.2 ** 2 + .2 ** 2 + .6 ** 2 + .6 ** 2 + (1 - 2) ** 2 + (1 + 2) ** 2) / 6
    value = KernelLoss(child, parent, "parent")()
    assert value.item() == pytest.approx(mse_a + mse_b, rel=1e-6)


def test_kernel_loss_latent_closed_form(pair: tuple[Pair, Pair]) -> None:
    child, _ = pair
    mse_a = ((.5 - .375) ** 2 + (-.25 + .375) ** 2 + (0 - .5) ** 2 + (-1 + .5) ** 2) / 4
    mse_b = (0 + 0 + (-.4 + .6) ** 2 + (.8 - .6) ** 2 + (1 - 2) ** 2 + (-3 + 2) ** 2) / 6
    assert KernelLoss(child, None, "latent")().item() == pytest.approx(mse_a + mse_b, rel=1e-6)


def test_kernel_loss_gradient_reaches_latent_weights(pair: tuple[Pair, Pair]) -> None:
    child, parent = pair
    KernelLoss(child, parent, "parent")().backward()
    # d/dW mean((α·sign(W) − H)²) = 2(Ĥ − H)/n · α · 1{|W| ≤ 1} (α detached, clipped STE)
    expected_a = 2 * (torch.tensor([[.375, -.375], [.5, -.5]]) - torch.tensor([[1.0, 0.0], [.5, -.5]])) / 4
    expected_a = expected_a * torch.tensor([[.375], [.5]])
    assert torch.allclose(child.a.weight.grad.view(2, 2), expected_a, atol=1e-7)
    # |W| = 3 is outside the STE clip: no gradient there; everything else of b gets one.
    gb = child.b.weight.grad.view(3, 2)
    assert gb[2, 1].item() == 0.0 and gb[2, 0].item() != 0.0
    assert parent.a.weight.grad is None


def test_kernel_loss_refuses_mismatched_parent(pair: tuple[Pair, Pair]) -> None:
    child, _ = pair
    with pytest.raises(ConfigError, match="kernel shape"):
        KernelLoss(child, Pair(False, second_shape=(4, 2)), "parent")
    other = nn.Module()
    other.a = nn.Conv2d(2, 2, 1, bias=False)
    with pytest.raises(ConfigError, match="no conv named 'b'"):
        KernelLoss(child, other, "parent")


def test_twin_networks_match_and_gradient_flows_end_to_end() -> None:
    g = load_genotype("DARTS_V2")
    kw = dict(init_channels=4, layers=3, in_channels=1, num_classes=10)
    child, parent = build_network(g, precision="binary", **kw), build_network(g, precision="fp32", **kw)
    loss_fn = KernelLoss(child, parent, "parent")
    assert len(loss_fn.layers) > 20
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    logits, _ = child(x)
    centre = CenterLoss(10, child.classifier.in_features)
    (F.cross_entropy(logits, y) + loss_fn() + 1e-3 * centre(child.last_features, y)).backward()
    grads = [m.weight.grad for _, m in loss_fn.layers]
    assert all(g_ is not None and g_.abs().sum() > 0 for g_ in grads)


def test_center_loss_value_and_update() -> None:
    cl = CenterLoss(num_classes=3, dim=2, alpha=0.5)
    cl.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    f = torch.tensor([[3.0, 4.0], [1.0, 1.0], [2.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    # ½·mean(‖(3,4)‖², 0, ‖(1,0)‖²) = ½·(25 + 0 + 1)/3
    assert cl(f, y).item() == pytest.approx(26 / 6)
    cl.update(f, y)
    # c0 → c0 − ½(c0 − (3,4)); c1 → c1 − ½(c1 − (1.5, 1)); c2 unseen stays
    assert torch.allclose(cl.centers, torch.tensor([[1.5, 2.0], [1.25, 1.0], [5.0, 5.0]]))
    assert "centers" in cl.state_dict()


def test_distillation_loss() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], requires_grad=True)
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert distillation_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    p, q = F.softmax(t / 4, 1), F.softmax(s / 4, 1)
    manual = (p * (p.log() - q.log())).sum(1).mean() * 16
    value = distillation_loss(s, t, 4.0)
    assert value.item() == pytest.approx(manual.item(), rel=1e-5)
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
