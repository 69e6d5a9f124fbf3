"""Blocks whose input feeds only their sign and residual add (`mark_private_inputs`), signs shared
by the consumers of one activation or written by the batch norm before them, and the fused α·sign(W)
node: the same values and gradients, bit for bit, as the graph of separate nodes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bitnas.binary import BinaryConv2d, fused, quantizers
from bitnas.nets import build_network
from bitnas.space import OpConfig, build_op
from bitnas.space.genotypes import load_genotype
from bitnas.space.structures import ResidualBlock
from tests.steps import adam_steps

torch.set_num_threads(1)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _blocks(m: nn.Module) -> list[ResidualBlock]:
    return [b for b in m.modules() if isinstance(b, ResidualBlock)]


@pytest.mark.parametrize("op", ["sep_conv_3x3", "dil_conv_3x3", "sep_conv_5x5"])
def test_separable_ops_mark_every_block_input_but_the_first(op):
    blocks = _blocks(build_op(op, 8, 1, OpConfig(structure="bireal")))
    assert [b.private_input for b in blocks] == [False] + [True] * (len(blocks) - 1)
    assert [b.bn.keep_sign for b in blocks] == [True] * (len(blocks) - 1) + [False]


def test_shared_sign_is_computed_once_and_follows_in_place_changes():
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    a, b = fused.shared_sign(x), fused.shared_sign(x)
    assert a.data_ptr() == b.data_ptr() and a is not b
    assert torch.equal(a, torch.where(x >= 0, 1.0, -1.0))
    with torch.no_grad():
        x.neg_()
    assert torch.equal(fused.shared_sign(x), torch.where(x >= 0, 1.0, -1.0))


def _unfused(m: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph of separate nodes: no private inputs, no kept or shared signs, the plain α · q(W)
    product."""
    monkeypatch.setattr(quantizers, "shared_sign", fused.sign)
    for b in _blocks(m):
        b.private_input = False
        if hasattr(b.bn, "keep_sign"):
            b.bn.keep_sign = False
    for conv in m.modules():
        if isinstance(conv, BinaryConv2d) and conv.weight_quantizer is not None:
            q = conv.weight_quantizer
            q.scaled = lambda w, alpha, q=q: alpha * q(w)


@pytest.mark.parametrize("structure", ["bireal", "ebnas", "reactnet", "kim"])
@pytest.mark.parametrize("activation", ["approx_sign", "ste_sign"])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_fused_nodes_give_the_separate_nodes_gradients(structure, activation, fmt, monkeypatch):
    """A sep conv whose output also feeds a concatenation (the residual's gradient a channel slice)."""
    grads = []
    for fuse in (True, False):
        torch.manual_seed(0)
        op = build_op("sep_conv_3x3", 8, 1, OpConfig(structure=structure, activation=activation))
        if not fuse:
            _unfused(op, monkeypatch)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(4, 8, 9, 9, generator=gen).contiguous(memory_format=fmt).requires_grad_()
        other = torch.randn(4, 8, 9, 9, generator=gen).contiguous(memory_format=fmt)
        y = op(x)
        out = torch.cat([y, other], 1) * torch.randn(4, 16, 9, 9, generator=gen)
        (out.sum() + (y * y).sum()).backward()
        grads.append([y, x.grad] + [p.grad for p in op.parameters()])
    assert len(grads[0]) == len(grads[1])
    assert all(torch.equal(bits(u), bits(v)) for u, v in zip(*grads))


def test_protocol_network_steps_equal_the_separate_nodes(monkeypatch):
    """Three Adam steps of the Bi-Real DARTS_V2 network: losses and weights bit for bit."""
    runs = []
    for fuse in (True, False):
        torch.manual_seed(0)
        net = build_network(load_genotype("DARTS_V2"), structure="bireal", activation="approx_sign",
                            init_channels=8, layers=3, num_classes=10, in_channels=1)
        if not fuse:
            _unfused(net, monkeypatch)
        runs.append(adam_steps(net))
    (la, pa), (lb, pb) = runs
    assert torch.equal(bits(la), bits(lb))
    assert all(torch.equal(bits(u), bits(v)) for u, v in zip(pa, pb))
