"""`batched_kernels`: one node binarises all of a network's convs, bitwise the per-conv nodes."""
from __future__ import annotations

import contextlib

import pytest
import torch

from bitnas.binary import BinaryConv2d, fused
from bitnas.binary.kernels import batched_kernels
from bitnas.nets import build_network
from bitnas.space.genotypes import load_genotype
from tests.steps import adam_steps

pytestmark = pytest.mark.skipif(fused.extension() is None, reason="bitnas.binary._fused not built")


def _net(structure: str, blocks: str = "") -> torch.nn.Module:
    torch.manual_seed(0)
    kw = dict(precision="binary", init_channels=4, layers=3, num_classes=10, in_channels=1, structure=structure)
    if blocks:
        return build_network(None, blocks=blocks, **kw)
    return build_network(load_genotype("DARTS_V2"), activation="approx_sign", **kw)


def _unbatched(monkeypatch) -> None:
    """From here on every conv binarises in its own node (the networks' forwards batch nothing)."""
    import bitnas.nets.blocks as blocks
    import bitnas.nets.network as network

    for module in (network, blocks):
        monkeypatch.setattr(module, "batched_kernels", lambda net: contextlib.nullcontext())


def _scaled_nodes(t: torch.Tensor) -> dict[str, int]:
    """How many nodes of each binarising kind the graph of `t` holds."""
    seen, todo, count = set(), [t.grad_fn], {"one": 0, "many": 0}
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        name = type(f).__name__
        count["one"] += name == "_ScaledSteSignFnBackward"
        count["many"] += name == "_ScaledSteSignManyBackward"
        todo.extend(g for g, _ in f.next_functions)
    return count


@pytest.mark.parametrize("structure,blocks", [("bireal", ""), ("darts", ""), ("cpnas", ""), ("bireal", "bireal")])
def test_batched_kernels_train_bitwise_as_per_conv_nodes(monkeypatch, structure, blocks):
    """Three Adam steps: losses and every weight bit for bit those of per-conv binarisation, and
    the graph holds one batched node instead of one node per conv."""
    a, b = _net(structure, blocks).train(), _net(structure, blocks).train()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    convs = [m for m in a.modules() if isinstance(m, BinaryConv2d) and m.is_binary]
    assert _scaled_nodes(a(x)[0]) == {"one": 0, "many": 1} and convs
    assert all(c.ready_kernel is None for c in convs)  # nothing left over after the forward
    la, pa = adam_steps(a)
    _unbatched(monkeypatch)
    assert _scaled_nodes(b(x)[0]) == {"one": len(convs), "many": 0}
    lb, pb = adam_steps(b)
    assert torch.equal(la.view(torch.int32), lb.view(torch.int32))
    assert all(torch.equal(u.view(torch.int32), v.view(torch.int32)) for u, v in zip(pa, pb))


def test_a_conv_used_twice_binarises_anew_the_second_time():
    """The batched kernel serves a conv's first call only: a second call builds its own node,
    so the weight's gradient is the sum of two per-use gradients, as without batching."""
    conv = BinaryConv2d(4, 4, 3, padding=1, input_quantizer="approx_sign", weight_quantizer="ste_sign")
    net = torch.nn.ModuleDict({"conv": conv}).train()
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(3))
    with batched_kernels(net):
        assert conv.ready_kernel is not None
        y = conv(x) + conv(x)
        assert conv.ready_kernel is None
    assert _scaled_nodes(y) == {"one": 1, "many": 1}
    y.sum().backward()
    got = conv.weight.grad.clone()
    conv.weight.grad = None
    (conv(x) + conv(x)).sum().backward()
    assert torch.equal(got.view(torch.int32), conv.weight.grad.view(torch.int32))


def test_nothing_is_batched_in_eval_or_without_gradients():
    net = _net("bireal")
    convs = [m for m in net.modules() if isinstance(m, BinaryConv2d) and m.is_binary]
    with torch.no_grad(), batched_kernels(net.train()):
        assert all(c.ready_kernel is None for c in convs)
    with batched_kernels(net.eval()):
        assert all(c.ready_kernel is None for c in convs)
