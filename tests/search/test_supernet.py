"""Supernet: partial-channel mixed op, channel shuffle, the DARTS mixed op, fused cells, derivation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitnas.search.supernet import (
    MixedOp, SuperNetwork, channel_shuffle, derive_genotype, fit_partial_ratio, normalized_edge_weights,
    shuffle_concat,
)
from bitnas.space.config import OpConfig
from bitnas.space.spaces import DARTS_OPS, get_space

FP32 = OpConfig(precision="fp32", structure="darts", affine=False)

def tiny_net(k: int = 1, edge_norm: bool = False, precision: str = "fp32", layers: int = 3) -> SuperNetwork:
    torch.manual_seed(0)
    cfg = OpConfig(precision=precision, structure="darts")
    return SuperNetwork(get_space("darts"), cfg, init_channels=8, layers=layers, in_channels=3, num_classes=5,
                        k_normal=k, k_reduce=k, edge_norm=edge_norm).double()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [2, 4])
def test_partial_mixed_op_shape(stride: int, k: int) -> None:
    op = MixedOp(16, stride, DARTS_OPS, FP32, k)
    x = torch.randn(2, 16, 8, 8)
    w = F.softmax(torch.randn(len(DARTS_OPS)), -1)
    assert op(x, w).shape == (2, 16, 8 // stride, 8 // stride)
    assert op.forward_single(x, 4).shape == (2, 16, 8 // stride, 8 // stride)
    assert all(m.weight.shape[0] in (16 // k, 16 // k // 2) for m in op.modules() if isinstance(m, torch.nn.Conv2d))


def test_partial_mixed_op_odd_size_reduction() -> None:
    op = MixedOp(8, 2, DARTS_OPS, FP32, 4)
    assert op(torch.randn(2, 8, 7, 7), F.softmax(torch.randn(8), -1)).shape == (2, 8, 4, 4)


@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_against_independent_reshaping(groups: int) -> None:
    c = 8
    x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(2, c, 3, 3).contiguous()
    per = c // groups
    expected = [g * per + i for i in range(per) for g in range(groups)]
    out = channel_shuffle(x, groups)
    assert out[0, :, 0, 0].tolist() == expected
    assert torch.equal(out[1, :, 2, 1], torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("channels_last", [False, True])
def test_shuffle_concat_is_channel_shuffle_of_cat(channels_last: bool) -> None:
    part, rest = torch.randn(2, 3, 5, 4), torch.randn(2, 9, 5, 4)
    if channels_last:
        part = part.contiguous(memory_format=torch.channels_last)
        rest = rest.contiguous(memory_format=torch.channels_last)
    out = shuffle_concat(part, rest, 4)
    assert torch.equal(out, channel_shuffle(torch.cat([part, rest], 1), 4))
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("stride", [1, 2])
def test_k1_mixed_op_is_the_darts_mixed_op(stride: int) -> None:
    torch.manual_seed(0)
    op = MixedOp(4, stride, DARTS_OPS, FP32, 1).double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.double)
    alpha = torch.randn(len(DARTS_OPS), dtype=torch.double)
    w = F.softmax(alpha, -1)
    expected = sum(w[k] * op.ops[k](x) for k in range(len(DARTS_OPS)))
    torch.testing.assert_close(op(x, w), expected, rtol=1e-12, atol=1e-12)


def _reference_cell(cell, s0, s1, w, ew):
    """A cell computed edge by edge with MixedOp.forward: Σ_j β_j·MixedOp_j(h_j, w_j)."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    off = 0
    for _ in range(cell.steps):
        total = 0
        for j, h in enumerate(states):
            out = cell.edges[off + j](h, w[off + j])
            total = total + (ew[off + j] * out if ew is not None else out)
        off += len(states)
        states.append(total)
    return torch.cat(states[-cell.multiplier:], 1)


@pytest.mark.parametrize("k,edge_norm,channels_last", [(1, False, False), (2, True, True), (4, True, False),
                                                      (4, False, True)])
def test_fused_cells_equal_edge_by_edge(k: int, edge_norm: bool, channels_last: bool) -> None:
    net = tiny_net(k, edge_norm)
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    s = net.stem(x)
    if channels_last:
        s = s.contiguous(memory_format=torch.channels_last)
    w = F.softmax(torch.randn(14, 8, dtype=torch.double), -1)
    ew = normalized_edge_weights(torch.randn(14, dtype=torch.double), 4) if edge_norm else None
    c0 = net.cells[0](s, s, w, ew)
    torch.testing.assert_close(c0, _reference_cell(net.cells[0], s, s, w, ew), rtol=1e-10, atol=1e-10)
    c1 = net.cells[1](s, c0, w, ew)  # reduction cell
    torch.testing.assert_close(c1, _reference_cell(net.cells[1], s, c0, w, ew), rtol=1e-10, atol=1e-10)


def test_channels_last_does_not_change_the_result() -> None:
    # fp32: binary convs sum ±α terms whose exact cancellations round to 0 or ±1e-17 depending on
    # the kernel's summation order, and the next sign() flips on that — layout-dependent by nature.
    net = tiny_net(4, True, precision="fp32")
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    net.channels_last = True
    a = net(x)[0]
    net.channels_last = False
    torch.testing.assert_close(net(x)[0], a, rtol=1e-9, atol=1e-9)


def test_zero_weight_ops_are_skipped_exactly() -> None:
    torch.manual_seed(0)
    op = MixedOp(4, 1, DARTS_OPS, FP32, 1).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.double)
    alpha = torch.randn(8, dtype=torch.double)
    alpha[4] = float("-inf")
    w = F.softmax(alpha, -1)
    calls = []
    handle = op.ops[4].register_forward_hook(lambda *a: calls.append(1))
    expected = sum(w[k] * op.ops[k](x) for k in range(8) if k != 4)
    calls.clear()
    torch.testing.assert_close(op(x, w), expected, rtol=1e-12, atol=1e-12)
    assert not calls
    handle.remove()


def test_single_path_with_left_out_edges() -> None:
    net = tiny_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.double)
    path = [4, 3, -1, 1, 2, 5, -1, -1, 6, -1, 7, -1, -1, 1]
    assert net(x, paths={"normal": path, "reduce": path})[0].shape == (2, 5)
    bad = [-1, -1] + path[2:]
    with pytest.raises(ValueError, match="no incoming edge"):
        net(x, paths={"normal": bad, "reduce": path})


def _scores(rows: dict[int, dict[int, float]]) -> torch.Tensor:
    s = torch.full((14, 8), 0.01)
    for e, ops in rows.items():
        for o, v in ops.items():
            s[e, o] = v
    return s


def test_derive_genotype_on_hand_set_alpha() -> None:
    ops = DARTS_OPS  # none, max, avg, skip, sep3, sep5, dil3, dil5
    # node 0: edges 0,1 — edge 0 has 'none' strongest, its best non-zero op is sep5
    # node 1: edges 2,3,4 — edge 4 weakest
    # node 2: edges 5..8 — edges 6 and 8 strongest
    # node 3: edges 9..13 — edges 9 and 13 strongest
    s = _scores({0: {0: 0.9, 5: 0.3}, 1: {6: 0.2}, 2: {3: 0.5}, 3: {1: 0.6}, 4: {7: 0.1},
                 6: {4: 0.4}, 8: {2: 0.45}, 9: {7: 0.7}, 13: {0: 0.99, 3: 0.8}})
    g = derive_genotype(s, s, ops)
    assert g.normal == (("sep_conv_5x5", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("max_pool_3x3", 1),
                        ("sep_conv_3x3", 1), ("avg_pool_3x3", 3), ("dil_conv_5x5", 0), ("skip_connect", 4))
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    assert g.normal_concat == (2, 3, 4, 5)


def test_derive_with_beta_ranking() -> None:
    net = tiny_net(edge_norm=True)
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_normal[0, 4] = 1.0  # node 0: edge 0 slightly stronger on α alone
        net.alphas_normal[1, 5] = 0.9
        net.alphas_normal[2, 6] = 1.0  # node 1: edges 2 and 3 strongest on α alone …
        net.alphas_normal[3, 6] = 1.0
        net.alphas_normal[4, 7] = 0.8
        net.betas_normal.zero_()
        net.betas_normal[2] = -3.0      # … but β demotes edge 2 below edge 4
    g = net.genotype()
    assert g.normal[:2] == (("sep_conv_3x3", 0), ("sep_conv_5x5", 1))
    assert g.normal[2:4] == (("dil_conv_3x3", 1), ("dil_conv_5x5", 2))
    net.edge_norm = False
    assert net.genotype().normal[2:4] == (("dil_conv_3x3", 0), ("dil_conv_3x3", 1))


def test_fit_partial_ratio() -> None:
    assert fit_partial_ratio(8, 8) == 8
    assert fit_partial_ratio(8, 12) == 6
    assert fit_partial_ratio(4, 6) == 3
    assert fit_partial_ratio(4, 7) == 1
