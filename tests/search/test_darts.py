"""DARTS / PC-DARTS: the second-order architect against finite differences, strategy defaults."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bitnas.data import ImageDataset
from bitnas.run import RunDir
from bitnas.search import darts, pcdarts, ubnas  # noqa: F401 - registers the strategies
from bitnas.search.architect import Architect
from bitnas.search.config import SearchConfig
from bitnas.search.strategy import STRATEGIES, SearchContext
from bitnas.search.supernet import SuperNetwork
from bitnas.space.config import OpConfig
from bitnas.space.spaces import get_space


def fake_context(tmp_path: Path, **cfg) -> SearchContext:
    n, c, size = 16, 1, 8
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(images=torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g),
                      labels=torch.arange(n) % 4, num_classes=4, mean=(0.5,), std=(0.25,), name="rand", source="rand")
    base = dict(init_channels=4, layers=3, batch_size=8, progress="off")
    scfg = SearchConfig(**{**base, **cfg})
    return SearchContext(cfg=scfg, device=torch.device("cpu"), train_set=ds, val_set=ds,
                         run=RunDir(tmp_path, writer=False))


def tiny_double_supernet() -> SuperNetwork:
    torch.manual_seed(0)
    net = SuperNetwork(get_space("darts"), OpConfig(precision="fp32", structure="darts"), init_channels=4,
                       layers=2, in_channels=3, num_classes=3, k_normal=1, k_reduce=1, edge_norm=True).double()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0.0, 0.5)
    net.channels_last = False
    return net.train()


def test_second_order_gradient_matches_finite_differences() -> None:
    net = tiny_double_supernet()
    g = torch.Generator().manual_seed(1)
    batch = lambda: (torch.randn(4, 3, 6, 6, generator=g, dtype=torch.double), torch.randint(3, (4,), generator=g))
    train, val = batch(), batch()
    xi, momentum, wd = 0.05, 0.9, 3e-3
    opt = torch.optim.SGD(net.weight_parameters(), lr=xi, momentum=momentum, weight_decay=wd)
    # one real step so the virtual step has a momentum buffer to account for
    F.cross_entropy(net(train[0])[0], train[1]).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    for a in net.arch_parameters():
        a.grad = None

    named = net.named_weight_parameters()
    names = [n for n, _ in named]
    w0 = [p.detach().clone() for _, p in named]
    bufs = [opt.state[p]["momentum_buffer"].clone() for _, p in named]
    buffers0 = {n: b.clone() for n, b in net.named_buffers()}
    arch = net.arch_parameters()

    def unrolled_val_loss(alphas: list[torch.Tensor]) -> torch.Tensor:
        """L_val(w − ξ(∇w L_train(w, α) + μ·buf + λ·w), α), α replaced functionally."""
        params = {n: w.clone().requires_grad_(True) for n, w in zip(names, w0)}
        arch_map = dict(zip(("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"), alphas))
        buffers = {n: b.clone() for n, b in buffers0.items()}
        lt = F.cross_entropy(functional_call(net, {**params, **arch_map, **buffers}, (train[0],))[0], train[1])
        gw = torch.autograd.grad(lt, list(params.values()))
        w1 = {n: w - xi * (gr + momentum * b + wd * w) for n, w, gr, b in zip(names, w0, gw, bufs)}
        return F.cross_entropy(functional_call(net, {**w1, **arch_map, **buffers}, (val[0],))[0], val[1])

    # DARTS' ε = 0.01/‖v‖ is too coarse to be exact on a 4-channel net (BN over 2×2 maps, ReLU
    # kinks); a small ε checks the algebra, the finite-difference Hessian term stays the same code.
    architect = Architect(net, 3e-4, (0.5, 0.999), 1e-3, fd_scale=1e-6)
    grads, _, _ = architect.gradients(train, val, xi, opt, unrolled=True)
    # the architect must leave weights and BN statistics exactly as they were
    assert all(torch.equal(p, w) for (_, p), w in zip(named, w0))
    assert all(torch.equal(b, buffers0[n]) for n, b in net.named_buffers())

    d = [torch.randn(a.shape, generator=g, dtype=torch.double) for a in arch]
    h = 1e-5
    base = [a.detach() for a in arch]
    plus = unrolled_val_loss([a + h * v for a, v in zip(base, d)])
    minus = unrolled_val_loss([a - h * v for a, v in zip(base, d)])
    numeric = float((plus - minus) / (2 * h))
    analytic = float(sum((gr * v).sum() for gr, v in zip(grads, d)))
    assert abs(analytic - numeric) <= 1e-5 * abs(numeric)
    first_order, _, _ = architect.gradients(train, val, xi, opt, unrolled=False)
    fo = float(sum((gr * v).sum() for gr, v in zip(first_order, d)))
    assert abs(fo - numeric) > 10 * abs(analytic - numeric)  # the second-order term matters here


def test_architect_step_moves_only_alpha(tmp_path: Path) -> None:
    ctx = fake_context(tmp_path, strategy="darts", unrolled=True, epochs=2)
    s = STRATEGIES.get("darts")(ctx)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    x, y = ctx.loader("train").batch(0)
    s.architect.step((x, y), (x, y), 0.025, s.w_optimizer, unrolled=True)
    for n, p in s.model.named_parameters():
        moved = not torch.equal(before[n], p)
        assert moved == (n in ("alphas_normal", "alphas_reduce")), n


def test_strategy_defaults(tmp_path: Path) -> None:
    d = STRATEGIES.get("darts")(fake_context(tmp_path, strategy="darts", epochs=50))
    assert (d.k_normal, d.k_reduce, d.edge_norm, d.warmup, d.arch_lr) == (1, 1, False, 0, 3e-4)
    assert len(d.model.arch_parameters()) == 2
    p = STRATEGIES.get("pcdarts")(fake_context(tmp_path, strategy="pcdarts", epochs=50))
    assert (p.k_normal, p.k_reduce, p.edge_norm, p.warmup, p.arch_lr) == (4, 4, True, 15, 6e-4)
    assert p.architect.optimizer.param_groups[0]["weight_decay"] == 1e-3
    assert p.space.name == "darts" and p.stopper.criterion == "none"
    u = STRATEGIES.get("ubnas")(fake_context(tmp_path, strategy="ubnas", epochs=10, init_channels=8))
    assert (u.k_normal, u.k_reduce, u.edge_norm, u.warmup) == (8, 4, True, 3)
    assert u.space.name == "ubnas" and u.model.cfg.activation == "approx_sign" and u.model.cfg.structure == "ebnas"
    assert (u.stopper.criterion, u.stopper.patience, u.arch_lr) == ("genotype", 3, 6e-4)
    o = STRATEGIES.get("pcdarts")(fake_context(tmp_path, strategy="pcdarts", epochs=3, k_normal=2, edge_norm="off",
                                               warmup_epochs=0, arch_lr=1e-3, precision="fp32", space="ubnas"))
    assert (o.k_normal, o.edge_norm, o.warmup, o.arch_lr, o.space.name) == (2, False, 0, 1e-3, "ubnas")


def test_partial_ratio_falls_back_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bitnas"):
        u = STRATEGIES.get("ubnas")(fake_context(tmp_path, strategy="ubnas", init_channels=6, epochs=1))
    assert (u.k_normal, u.k_reduce) == (6, 3)
    assert "k_normal=8 does not divide init_channels=6" in caplog.text
    x = torch.randn(2, 1, 8, 8)
    assert u.model(x)[0].shape == (2, 4)


def test_unrolled_needs_sgd(tmp_path: Path) -> None:
    from bitnas.errors import ConfigError

    with pytest.raises(ConfigError, match="sgd"):
        STRATEGIES.get("darts")(fake_context(tmp_path, strategy="darts", unrolled=True, w_optimizer="adam"))
