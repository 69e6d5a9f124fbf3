"""Fixed networks from genotypes: forward/backward in both precisions, every structure, rebuild from spec."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitnas.binary import binarized_layers
from bitnas.nets import NetworkCIFAR, NetworkImageNet, arch_spec, build_network, drop_path, network_from_spec
from bitnas.space import STRUCTURES
from bitnas.space.genotypes import GENOTYPES

torch.set_num_threads(1)

C0, LAYERS, CLASSES = 4, 5, 7


def _unused_params(net: nn.Module) -> set[str]:
    """Parameters no path can reach: preprocess0 of a cell whose edges never read input 0."""
    out = set()
    for i, cell in enumerate(net.cells):
        if 0 not in cell.indices:
            out |= {f"cells.{i}.preprocess0.{n}" for n, _ in cell.preprocess0.named_parameters()}
    return out


def _train_step(net: nn.Module, x: torch.Tensor, aux_weight: float = 0.4) -> tuple[torch.Tensor, torch.Tensor | None]:
    net.train()
    y = torch.arange(x.shape[0]) % CLASSES
    logits, aux = net(x)
    loss = F.cross_entropy(logits, y)
    if aux is not None:
        loss = loss + aux_weight * F.cross_entropy(aux, y)
    loss.backward()
    assert torch.isfinite(loss)
    return logits, aux


def _check_grads(net: nn.Module, all_nonzero: bool = True) -> None:
    """Every reachable parameter has a finite gradient; every conv a non-zero one unless drop path
    may have removed whole ops for the (tiny) batch."""
    skip = _unused_params(net)
    for n, p in net.named_parameters():
        if n in skip:
            continue
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} gradient not finite"
    assert net.classifier.weight.grad.abs().sum() > 0
    stem = [m for n, m in net.named_modules() if n.startswith("stem") and isinstance(m, nn.Conv2d)]
    assert stem and all(m.weight.grad.abs().sum() > 0 for m in stem)
    if all_nonzero:
        for n, m in net.named_modules():
            if isinstance(m, nn.Conv2d) and f"{n}.weight" not in skip:
                assert m.weight.grad.abs().sum() > 0, f"{n}: all-zero gradient"


@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)], ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("precision", ["binary", "fp32"])
@pytest.mark.parametrize("genotype", GENOTYPES.names())
def test_cifar_network_forward_backward(genotype, precision, in_shape):
    torch.manual_seed(0)
    net = build_network(GENOTYPES.get(genotype), style="cifar", precision=precision, init_channels=C0,
                        layers=LAYERS, num_classes=CLASSES, in_channels=in_shape[0], auxiliary=True,
                        drop_path_prob=0.2)
    assert isinstance(net, NetworkCIFAR)
    x = torch.randn(2, *in_shape)
    logits, aux = _train_step(net, x)
    assert logits.shape == (2, CLASSES)
    assert aux is not None and aux.shape == (2, CLASSES)
    _check_grads(net, all_nonzero=False)
    if in_shape[0] == 3 and precision == "binary":
        # without drop path every conv (binary ones through the STE) must receive a non-zero gradient
        net.zero_grad(set_to_none=True)
        net.drop_path_prob = 0.0
        _train_step(net, x)
        _check_grads(net)
    # eval: no auxiliary logits
    net.eval()
    with torch.no_grad():
        a, aux_eval = net(x)
    assert aux_eval is None and a.shape == (2, CLASSES) and torch.isfinite(a).all()
    assert bool(binarized_layers(net)) == (precision == "binary")


@pytest.mark.parametrize("structure", STRUCTURES.names())
@pytest.mark.parametrize("precision", ["binary", "fp32"])
def test_every_structure_builds_a_trainable_network(structure, precision):
    torch.manual_seed(0)
    # 3 cells: normal, reduction, reduction (aux head after cell 2)
    net = build_network(GENOTYPES.get("PC_DARTS_cifar"), precision=precision, structure=structure,
                        init_channels=C0, layers=3, num_classes=CLASSES, auxiliary=True, drop_path_prob=0.0)
    assert [c.reduction for c in net.cells] == [False, True, True]
    logits, aux = _train_step(net, torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, CLASSES) and aux.shape == (2, CLASSES)
    _check_grads(net)


@pytest.mark.parametrize("precision", ["binary", "fp32"])
@pytest.mark.parametrize("genotype", ["DARTS_V2", "PDARTS"])
def test_imagenet_network_tiny(genotype, precision):
    torch.manual_seed(0)
    net = build_network(GENOTYPES.get(genotype), style="imagenet", precision=precision, init_channels=8,
                        layers=LAYERS, num_classes=CLASSES, auxiliary=True, drop_path_prob=0.2)
    assert isinstance(net, NetworkImageNet)
    logits, aux = _train_step(net, torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, CLASSES) and aux.shape == (2, CLASSES)
    _check_grads(net, all_nonzero=False)


def test_network_structure_matches_darts_layout():
    """Reductions at L/3 and 2L/3 double the channels; cell outputs = 4·C; stem = 3·C."""
    net = build_network(GENOTYPES.get("DARTS_V2"), precision="fp32", init_channels=C0, layers=8, num_classes=CLASSES,
                        auxiliary=True)
    assert net.stem[0].out_channels == 3 * C0
    assert [c.reduction for c in net.cells] == [i in (2, 5) for i in range(8)]
    feats = {}
    for i, cell in enumerate(net.cells):
        cell.register_forward_hook(lambda m, inp, out, i=i: feats.__setitem__(i, out))
    aux_in = []
    net.auxiliary_head.register_forward_hook(lambda m, inp, out: aux_in.append(inp[0]))
    net.eval()
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    assert not aux_in  # no auxiliary head at evaluation
    assert feats[0].shape == (2, 4 * C0, 32, 32)
    assert feats[2].shape == (2, 8 * C0, 16, 16)
    assert feats[7].shape == (2, 16 * C0, 8, 8)
    assert net.classifier.in_features == 16 * C0
    # the auxiliary head reads the output of cell 2L/3 = 5 (the second reduction cell)
    net.train()
    net(torch.randn(2, 3, 32, 32))
    assert len(aux_in) == 1 and aux_in[0] is feats[5]


def test_drop_path_zeroes_samples_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(1000, 2, 3, 3, dtype=torch.float64)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 1 / 0.75}
    assert (per_sample.amin(1) == per_sample.amax(1)).all()  # whole samples dropped
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.06
    assert drop_path(x, 0.0) is x


def test_drop_path_is_applied_in_training_only():
    torch.manual_seed(0)
    net = build_network(GENOTYPES.get("DARTS_V2"), precision="fp32", init_channels=4, layers=3,
                        num_classes=CLASSES, drop_path_prob=0.5)
    x = torch.randn(4, 3, 16, 16)
    net.train()
    outs = [net(x)[0] for _ in range(2)]
    assert not torch.allclose(outs[0], outs[1])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x)[0], net(x)[0])


@pytest.mark.parametrize("style,precision,structure", [
    ("cifar", "binary", "cpnas"), ("cifar", "fp32", "darts"), ("imagenet", "binary", "reactnet"),
    ("cifar", "binary", "ebnas"),
])
def test_arch_spec_rebuild_gives_same_state_dict(style, precision, structure):
    g = GENOTYPES.get("PDARTS")
    kw = dict(style=style, precision=precision, structure=structure, init_channels=C0, layers=LAYERS,
              num_classes=CLASSES, in_channels=3, auxiliary=True, drop_path_prob=0.2, activation="approx_sign")
    net = build_network(g, **kw)
    spec = arch_spec(g, **kw)
    spec = json.loads(json.dumps(spec))  # stored in checkpoints: plain JSON-able data
    rebuilt = network_from_spec(spec)
    a, b = net.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert rebuilt.genotype == g
    assert rebuilt.cfg == net.cfg
    rebuilt.load_state_dict(a)
    net.eval(), rebuilt.eval()
    x = torch.randn(2, 3, 32 if style == "cifar" else 64, 32 if style == "cifar" else 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], rebuilt(x)[0])
    # overrides apply on rebuild
    fp = network_from_spec(spec, precision="fp32")
    assert binarized_layers(fp) == []


def test_parent_and_child_networks_share_conv_names_and_shapes():
    g = GENOTYPES.get("PC_DARTS_cifar")
    parent = build_network(g, precision="fp32", init_channels=C0, layers=LAYERS)
    child = build_network(g, precision="binary", init_channels=C0, layers=LAYERS)
    pc = {n: m.weight.shape for n, m in parent.named_modules() if isinstance(m, nn.Conv2d)}
    cc = {n: m.weight.shape for n, m in child.named_modules() if isinstance(m, nn.Conv2d)}
    assert pc == cc
    assert {n for n, _ in binarized_layers(child)} == {n for n in cc if n.startswith("cells.")}


def _channels_last_ordered(t: torch.Tensor) -> bool:
    """Channels-last storage order (dense or a channel slice of a dense channels-last tensor)."""
    return t.shape[-2:] == (1, 1) or t.shape[1] == 1 or (t.stride(1) == 1 and t.stride(3) >= t.shape[1])


def _twin_step(net: nn.Module, channels_last: bool, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.channels_last = channels_last
    net.zero_grad(set_to_none=True)
    logits, aux = _train_step(net, x)
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return logits.detach(), grads


# Genotype networks in every module structure, and the hand-designed block networks.
LAYOUT_NETS = [("genotype", s) for s in STRUCTURES.names()] + [("blocks", "bireal"), ("blocks", "reactnet")]


def _layout_net(kind: str, name: str, precision: str, style: str = "cifar", in_channels: int = 3,
                drop_path_prob: float = 0.0) -> nn.Module:
    kw = dict(precision=precision, init_channels=C0, layers=LAYERS, num_classes=CLASSES, in_channels=in_channels,
              pad_value=1.0, drop_path_prob=drop_path_prob)
    if kind == "blocks":
        return build_network(None, blocks=name, **kw)
    return build_network(GENOTYPES.get("DARTS_V2"), style=style, structure=name, auxiliary=True, **kw)


@pytest.mark.parametrize("kind,name", LAYOUT_NETS)
@pytest.mark.parametrize("precision,style", [("binary", "cifar"), ("fp32", "cifar"), ("fp32", "imagenet")])
def test_channels_last_computes_what_nchw_computes(kind, name, precision, style):
    """The channels-last cells give NCHW's logits, gradients and BatchNorm statistics.

    Float64, and binary latent weights ±0.5 (so α = 0.5 and every binary conv sums exactly in any
    order): rounding cannot flip a sign, so any difference is a real one. (The ImageNet-style net
    on these tiny inputs ends on 1×1 maps whose batch statistics of 4 binary values are
    degenerate, so only its fp32 twin is compared.)
    """
    if kind == "blocks" and style != "cifar":
        pytest.skip("hand-designed networks come in the cifar style only")
    torch.manual_seed(0)
    size = 32 if style == "cifar" else 64
    net = _layout_net(kind, name, precision, style).double()
    with torch.no_grad():
        for _, layer in binarized_layers(net):
            layer.weight.copy_(torch.where(torch.randn_like(layer.weight) >= 0, 0.5, -0.5))
    nchw_net = _layout_net(kind, name, precision, style).double()
    nchw_net.load_state_dict(net.state_dict())
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    la, ga = _twin_step(net, True, x)
    lb, gb = _twin_step(nchw_net, False, x)
    torch.testing.assert_close(la, lb, rtol=1e-9, atol=1e-9)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-7, atol=1e-9, msg=n)
    for (n, a), b in zip(net.named_buffers(), nchw_net.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=n)


@pytest.mark.parametrize("kind,name", LAYOUT_NETS)
def test_cells_run_channels_last_both_ways_on_cpu(kind, name):
    """Every conv, pooling and batch norm of the cells gets channels-last inputs and output
    gradients, so no kernel falls back to a mixed-format path."""
    torch.manual_seed(0)
    net = _layout_net(kind, name, "binary", in_channels=1, drop_path_prob=0.2)
    seen: list[tuple[str, str, bool]] = []
    for name, m in net.named_modules():
        if name.startswith("cells.") and isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)):
            def hook(m, inp, out, name=name):
                seen.append((name, "input", _channels_last_ordered(inp[0])))
                out.register_hook(lambda g: seen.append((name, "grad", _channels_last_ordered(g))))
            m.register_forward_hook(hook)
    _train_step(net, torch.randn(4, 1, 28, 28))
    assert len(seen) > 20
    assert [s for s in seen if not s[2]] == []


def _reference_cell_forward(cell: nn.Module, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
    """A cell's forward as separate ops and adds (each node: op a, op b, then `h_a + h_b`)."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    for i in range(cell.steps):
        a, b = 2 * i, 2 * i + 1
        h = cell.ops[a](states[cell.indices[a]])
        states.append(h + cell.ops[b](states[cell.indices[b]]))
    return torch.cat([states[i] for i in cell.concat], dim=1)


@pytest.mark.parametrize("structure", ["bireal", "darts", "reactnet"])
def test_cell_node_sums_in_batch_norm_pass_are_bitwise_separate_adds(structure):
    """The training cell adds a node's two terms inside an op's last batch-norm pass
    (`forward_plus`); outputs, every gradient and the running statistics equal separate ops and
    adds bit for bit, for a normal and a reduction cell of a genotype with skips and pools."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = build_network(GENOTYPES.get("DARTS_V2"), precision="binary", structure=structure, init_channels=8,
                            layers=3, num_classes=10, in_channels=1, activation="approx_sign").train()
        twin = build_network(GENOTYPES.get("DARTS_V2"), precision="binary", structure=structure, init_channels=8,
                             layers=3, num_classes=10, in_channels=1, activation="approx_sign").train()
        twin.load_state_dict(net.state_dict())
        gen = torch.Generator().manual_seed(1)
        cl = torch.channels_last
        s0 = torch.randn(4, 24, 12, 12, generator=gen).contiguous(memory_format=cl)
        for i in (0, 1):  # normal, then reduction
            cell, ref = net.cells[i], twin.cells[i]
            c_p = cell.preprocess1.conv.in_channels
            s1 = torch.randn(4, c_p, 12, 12, generator=gen).contiguous(memory_format=cl)
            x = [t.clone().requires_grad_() for t in (s0, s1, s0, s1)]
            out = cell(x[0], x[1])
            want = _reference_cell_forward(ref, x[2], x[3])
            g = torch.randn(out.shape, generator=gen).contiguous(memory_format=cl)
            out.backward(g)
            want.backward(g)
            got = [out, x[0].grad, x[1].grad] + [p.grad for p in cell.parameters()] + list(cell.buffers())
            exp = [want, x[2].grad, x[3].grad] + [p.grad for p in ref.parameters()] + list(ref.buffers())
            assert len(got) == len(exp)
            for u, v in zip(got, exp):
                assert (u is None) == (v is None)
                if u is not None:
                    assert torch.equal(u.contiguous().view(-1).view(torch.uint8), v.contiguous().view(-1).view(torch.uint8))
    finally:
        torch.set_num_threads(threads)
