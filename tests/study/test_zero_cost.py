"""Zero-cost estimators against hand computations: closed forms on tiny 1-bit networks, and a
plain numpy forward/backward written here independently of the package's layers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bitnas.binary.layers import BinaryConv2d
from bitnas.binary.quantizers import LearnableBiasSign
from bitnas.errors import ConfigError
from bitnas.study.estimators import zero_cost as zc


def _binary_mlp(cin: int, c2: int, k: int, seed: int = 0) -> nn.Sequential:
    """sign → binary 1×1 conv (α·sign(W), α = mean|W| per channel) → flatten → linear, on 1×1 images."""
    torch.manual_seed(seed)
    net = nn.Sequential(BinaryConv2d(cin, c2, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign"),
                        nn.Flatten(), nn.Linear(c2, k))
    with torch.no_grad():
        net[0].weight.uniform_(-0.9, 0.9)
        net[0].weight[0, 0] = 1.5  # outside the STE clip: no gradient to this latent weight
    return net


def _np_grads(net: nn.Sequential, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(∂L/∂W_conv, ∂L/∂W_linear) of the mean cross-entropy, by hand: forward, softmax, chain rule,
    straight-through sign for the latent weights (1 where |W| ≤ 1, times the detached α)."""
    w1 = net[0].weight.detach().double().numpy()[:, :, 0, 0]
    wl = net[2].weight.detach().double().numpy()
    bl = net[2].bias.detach().double().numpy()
    xs = np.where(x >= 0, 1.0, -1.0)
    alpha = np.abs(w1).mean(axis=1)
    wb = alpha[:, None] * np.where(w1 >= 0, 1.0, -1.0)
    z1 = xs @ wb.T
    logits = z1 @ wl.T + bl
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d = (p - np.eye(wl.shape[0])[y]) / len(y)
    g_wl = d.T @ z1
    g_w1 = (d @ wl).T @ xs * alpha[:, None] * (np.abs(w1) <= 1.0)
    return g_w1, g_wl


def _batch(n: int, cin: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cin, 1, 1, generator=g), torch.randint(0, k, (n,), generator=g)


def test_registry_names_and_refusals() -> None:
    assert zc.ZERO_COST.names() == ["params", "synflow", "grad_norm", "naswot", "zico"]
    with pytest.raises(ConfigError, match="did you mean 'synflow'"):
        zc.get("synflw")
    with pytest.raises(ConfigError, match="listed twice"):
        zc.check_names(["zico", "zico"], "fidelity")
    with pytest.raises(ConfigError, match="at least 2 batches"):
        zc.get("zico")(_binary_mlp(3, 2, 2), [_batch(4, 3, 2, 0)])


def test_params_counts_one_bit_and_32_bit() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4),
                        BinaryConv2d(4, 6, 3, input_quantizer="approx_sign", weight_quantizer="ste_sign"),
                        nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
    hand = 1 * 4 * 9 + 2 * 4 + 4 * 6 * 9 + 2 * 6 + 6 * 10 + 10
    assert zc.get("params")(net, []) == hand


def test_synflow_closed_form_on_a_two_layer_binary_network() -> None:
    """stem W0 (fp32) → BN → sign → binary W1 → linear Wl on one 1×1 all-ones image, |θ| everywhere:
    h1 = |W0|·1 ≥ 0 so sign = +1; kernel α_j·sign(|W1|) = α_j; R = Σ_j s_j c1 α_j with s = colsum|Wl|.
    θ·∂R/∂θ summed: linear R; binary Σ_j s_j α_j · c1 α_j (STE times α); stem Σ|W0| · Σ_j s_j α_j
    (the sign passes the gradient straight through). BN is passed through: its values do not matter."""
    torch.manual_seed(3)
    cin, c1, c2, k = 2, 3, 4, 5
    net = nn.Sequential(nn.Conv2d(cin, c1, 1, bias=False), nn.BatchNorm2d(c1),
                        BinaryConv2d(c1, c2, 1, input_quantizer="approx_sign", weight_quantizer="ste_sign"),
                        nn.Flatten(), nn.Linear(c2, k, bias=False))
    with torch.no_grad():
        net[2].weight.uniform_(-0.9, 0.9)
        net[1].running_var.fill_(9.0)
        net[1].running_mean.fill_(-4.0)
        net[1].weight.fill_(3.0)
    before = {n: t.clone() for n, t in net.state_dict().items()}
    w0 = net[0].weight.detach().double().abs().numpy()
    w1 = net[2].weight.detach().double().abs().numpy()[:, :, 0, 0]
    wl = net[4].weight.detach().double().abs().numpy()
    alpha, s = w1.mean(axis=1), wl.sum(axis=0)
    a = float((s * alpha).sum())
    expected = c1 * a + c1 * float((s * alpha ** 2).sum()) + w0.sum() * a
    got = zc.get("synflow")(net, [(torch.zeros(7, cin, 1, 1), torch.zeros(7, dtype=torch.long))])
    assert got == pytest.approx(expected, rel=1e-12)
    assert all(torch.equal(before[n], t) for n, t in net.state_dict().items())  # scored on a copy


def test_synflow_is_float64_on_a_deep_network() -> None:
    """Forty 3×3 layers of 64 channels overflow float32 (|θ| products grow by ~100 per layer)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 64, 3, padding=1, bias=False)]
    layers += [BinaryConv2d(64, 64, 3, padding=1, input_quantizer="approx_sign", weight_quantizer="ste_sign")
               for _ in range(40)]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
    got = zc.get("synflow")(net, [(torch.zeros(1, 1, 4, 4), torch.zeros(1, dtype=torch.long))])
    assert math.isfinite(got) and got > 3.4e38


def test_grad_norm_matches_the_hand_gradient() -> None:
    net = _binary_mlp(6, 4, 3)
    x, y = _batch(16, 6, 3, 1)
    g_w1, g_wl = _np_grads(net, x.double().numpy()[:, :, 0, 0], y.numpy())
    assert g_w1[0, 0] == 0.0 and np.abs(g_w1).sum() > 0
    expected = np.linalg.norm(g_w1) + np.linalg.norm(g_wl)
    assert zc.get("grad_norm")(net, [(x, y), _batch(16, 6, 3, 2)]) == pytest.approx(expected, rel=1e-5)


def test_zico_matches_the_hand_formula() -> None:
    net = _binary_mlp(6, 4, 3)
    batches = [_batch(8, 6, 3, s) for s in range(3)]
    grads = [_np_grads(net, x.double().numpy()[:, :, 0, 0], y.numpy()) for x, y in batches]
    expected = 0.0
    for layer in range(2):
        g = np.stack([gr[layer].ravel() for gr in grads])
        std, mean_abs = g.std(axis=0), np.abs(g).mean(axis=0)
        keep = std > 0
        assert (~keep).sum() == (1 if layer == 0 else 0)  # W1[0, 0], clipped, has no gradient: skipped
        expected += math.log((mean_abs[keep] / std[keep]).sum())
    assert zc.get("zico")(net, batches) == pytest.approx(expected, rel=1e-5)


def _hand_naswot(codes: np.ndarray) -> float:
    """K[i, j] = N_A − Hamming(c_i, c_j), by loops; log|det K|."""
    n, na = codes.shape
    k = np.array([[na - sum(int(a != b) for a, b in zip(codes[i], codes[j])) for j in range(n)] for i in range(n)],
                 dtype=np.float64)
    return float(np.linalg.slogdet(k)[1])


def test_naswot_codes_are_the_signs_feeding_the_binary_conv() -> None:
    net = _binary_mlp(5, 3, 2)
    x, y = _batch(4, 5, 2, 7)
    x[0, 1] = 0.0  # sign(0) = +1: code 1
    codes = (x.numpy()[:, :, 0, 0] >= 0).astype(int)
    assert zc.get("naswot")(net, [(x, y)]) == pytest.approx(_hand_naswot(codes), rel=1e-12)


def test_naswot_reads_a_learnable_bias_sign_and_falls_back_to_relus() -> None:
    torch.manual_seed(1)
    rsign = LearnableBiasSign(5)
    with torch.no_grad():
        rsign.bias.copy_(torch.linspace(-1, 1, 5).view(1, 5, 1, 1))
    net = nn.Sequential(rsign, BinaryConv2d(5, 3, 1, weight_quantizer="ste_sign"), nn.Flatten(), nn.Linear(3, 2))
    x, y = _batch(4, 5, 2, 8)
    codes = ((x + rsign.bias.detach()).numpy()[:, :, 0, 0] >= 0).astype(int)
    assert zc.get("naswot")(net, [(x, y)]) == pytest.approx(_hand_naswot(codes), rel=1e-12)
    fp = nn.Sequential(nn.Flatten(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    h = fp[1](x.flatten(1)).detach().numpy()
    assert zc.get("naswot")(fp, [(x, y)]) == pytest.approx(_hand_naswot((h > 0).astype(int)), rel=1e-12)


def test_score_network_scores_each_on_its_own_copy() -> None:
    net = _binary_mlp(6, 4, 3)
    batches = [_batch(8, 6, 3, s) for s in range(2)]
    both = zc.score_network(net, batches, ["zico", "grad_norm"])
    assert both["grad_norm"] == zc.score_network(net, batches, ["grad_norm"])["grad_norm"]
    assert net[0].weight.grad is None
    assert zc.images_read(["params", "synflow", "grad_norm", "zico"], batches) == 8 + 16
