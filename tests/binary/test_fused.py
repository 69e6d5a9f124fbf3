"""The fused C++ passes (`bitnas.binary._fused`) are bitwise the torch expressions they replace."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitnas.binary import fused
from tests.steps import adam_steps

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
        return adam_steps(net)

    (la, pa), (lb, pb) = run(), torch_path(run)
    assert torch.equal(bits(la), bits(lb))
    assert all(torch.equal(bits(u), bits(v)) for u, v in zip(pa, pb))


@pytest.fixture
def one_thread():
    """One torch thread (the batch-norm kernel replays ATen's single-threaded arithmetic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bn_case(shape, seed=0, affine=True):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3 + 1).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    c = shape[1]
    w, b = (torch.randn(c, generator=gen), torch.randn(c, generator=gen)) if affine else (None, None)
    _, mean, invstd = torch.native_batch_norm(x, w, b, torch.zeros(c), torch.ones(c), True, 0.1, 1e-5)
    return x, dy, w, mean, invstd


@pytest.mark.parametrize("c", [2, 3, 5, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_is_atens(one_thread, c, affine):
    """Every channel count (whole blocks of 8, a scalar tail, both) and BN without affine."""
    x, dy, w, mean, invstd = _bn_case((16, c, 7, 6), seed=c, affine=affine)
    mask = (True, affine, affine)
    got = fused.batch_norm_backward(dy, x, w, mean, invstd, 1e-5, mask)
    want = torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, mean, invstd, True, 1e-5, list(mask))
    for g_, w_, m in zip(got, want, mask):
        assert (g_ is None) == (not m)
        if m:
            assert g_.stride() == w_.stride()
            assert torch.equal(bits(g_), bits(w_))


def test_batch_norm_backward_protocol_shapes(one_thread):
    for shape in [(64, 8, 28, 28), (64, 16, 14, 14), (64, 32, 7, 7), (64, 24, 28, 28)]:
        x, dy, w, mean, invstd = _bn_case(shape)
        got = fused.batch_norm_backward(dy, x, w, mean, invstd, 1e-5, (True, True, True))
        want = torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, mean, invstd, True, 1e-5,
                                                         [True, True, True])
        assert all(torch.equal(bits(a), bits(b)) for a, b in zip(got, want))


def test_bitnas_batch_norm_matches_nn_batch_norm(one_thread):
    """The module (ATen forward + this backward): outputs, all gradients and running statistics."""
    from bitnas.space.batchnorm import BatchNorm2d

    for momentum in (0.1, None):
        a = BatchNorm2d(16, momentum=momentum)
        b = torch.nn.BatchNorm2d(16, momentum=momentum)
        with torch.no_grad():
            a.weight.normal_(), a.bias.normal_()
        b.load_state_dict(a.state_dict())
        gen = torch.Generator().manual_seed(3)
        for _ in range(3):
            x = torch.randn(8, 16, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
            g = torch.randn(8, 16, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = a(xa), b(xb)
            ya.backward(g)
            yb.backward(g)
            pairs = [(ya, yb), (xa.grad, xb.grad), (a.weight.grad, b.weight.grad), (a.bias.grad, b.bias.grad),
                     (a.running_mean, b.running_mean), (a.running_var, b.running_var)]
            assert all(torch.equal(bits(u), bits(v)) for u, v in pairs)
            assert a.num_batches_tracked == b.num_batches_tracked


@pytest.mark.parametrize("c,total,offset", [(8, 32, 0), (8, 32, 8), (16, 64, 48), (32, 128, 32), (3, 12, 3),
                                            (12, 24, 12)])
def test_batch_norm_backward_of_a_concat_slice_is_atens(c, total, offset):
    """A gradient that is a channel slice of a channels-last one: ATen's generic path, replayed."""
    x, _, w, mean, invstd = _bn_case((32, c, 7, 6), seed=c + offset)
    big = torch.randn(32, total, 7, 6, generator=torch.Generator().manual_seed(9)).contiguous(
        memory_format=torch.channels_last)
    dy = big[:, offset:offset + c]
    got = fused.batch_norm_backward(dy, x, w, mean, invstd, 1e-5, (True, True, True))
    want = torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, mean, invstd, True, 1e-5, [True] * 3)
    for a, b in zip(got, want):
        assert a.stride() == b.stride()
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("c", [8, 12, 16])
def test_batch_norm_backward_of_an_nchw_gradient_is_atens(c):
    x, dy, w, mean, invstd = _bn_case((32, c, 7, 6), seed=c)
    dy = dy.contiguous()
    got = fused.batch_norm_backward(dy, x, w, mean, invstd, 1e-5, (True, True, True))
    want = torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, mean, invstd, True, 1e-5, [True] * 3)
    for a, b in zip(got, want):
        assert a.stride() == b.stride()
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("c", [2, 3, 8, 12, 16, 20, 24, 32, 64])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0 / 3.0])
def test_batch_norm_forward_is_atens(one_thread, c, affine, track, momentum):
    gen = torch.Generator().manual_seed(c)
    x = (torch.randn(16, c, 9, 7, generator=gen) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
    w, b = (torch.randn(c, generator=gen), torch.randn(c, generator=gen)) if affine else (None, None)
    rm, rv = (torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5) if track else (None, None)
    rm2, rv2 = (rm.clone(), rv.clone()) if track else (None, None)
    got = fused.batch_norm_forward(x, w, b, rm, rv, momentum, 1e-5)
    want = torch.native_batch_norm(x, w, b, rm2, rv2, True, momentum, 1e-5)
    for a, e in zip(got, want):
        assert a.stride() == e.stride()
        assert torch.equal(bits(a), bits(e))
    if track:
        assert torch.equal(bits(rm), bits(rm2)) and torch.equal(bits(rv), bits(rv2))


def test_batch_norm_with_residual_is_batch_norm_then_add(one_thread):
    """`BatchNorm2d(x, residual=r)` (one C++ pass) equals `BN(x) + r` bit for bit, gradients too."""
    from bitnas.space.batchnorm import BatchNorm2d

    a, b = BatchNorm2d(16), BatchNorm2d(16)
    with torch.no_grad():
        a.weight.normal_(), a.bias.normal_()
    b.load_state_dict(a.state_dict())
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 16, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    r = torch.randn(8, 16, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    g = torch.randn(8, 16, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    xa, xb, ra, rb = (t.clone().requires_grad_() for t in (x, x, r, r))
    ya, yb = a(xa, residual=ra), b(xb) + rb
    ya.backward(g)
    yb.backward(g)
    pairs = [(ya, yb), (xa.grad, xb.grad), (ra.grad, rb.grad), (a.weight.grad, b.weight.grad),
             (a.running_var, b.running_var)]
    assert all(torch.equal(bits(u), bits(v)) for u, v in pairs)


@pytest.mark.parametrize("c", [8, 16, 12])
def test_batch_norm_with_residual_and_addend_is_two_adds(one_thread, c):
    """`BatchNorm2d(x, r, a)` (one C++ pass) equals `(BN(x) + r) + a` bit for bit, signed zeros and
    special values included, gradients too (r and a get the output's gradient)."""
    from bitnas.space.batchnorm import BatchNorm2d

    a, b = BatchNorm2d(c), BatchNorm2d(c)
    with torch.no_grad():
        a.weight.normal_(), a.bias.normal_()
    b.load_state_dict(a.state_dict())
    x, g = operands((6, c, 5, 7), torch.channels_last, seed=c)
    x = x.nan_to_num(0.0, 1.0, -1.0)  # finite batch statistics
    r, s = operands((6, c, 5, 7), torch.channels_last, seed=c + 1)
    gen = torch.Generator().manual_seed(c)
    r.masked_fill_(torch.rand(r.shape, generator=gen) < 0.3, -0.0)
    s.masked_fill_(torch.rand(s.shape, generator=gen) < 0.3, -0.0)
    ins = [t.clone().requires_grad_() for t in (x, r, s, x, r, s)]
    ya = a(ins[0], ins[1], ins[2])
    yb = (b(ins[3]) + ins[4]) + ins[5]
    ya.backward(g)
    yb.backward(g)
    pairs = [(ya, yb), (a.weight.grad, b.weight.grad), (a.running_mean, b.running_mean)]
    pairs += [(u.grad, v.grad) for u, v in zip(ins[:3], ins[3:])]
    assert all(torch.equal(bits(u), bits(v)) for u, v in pairs)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 2, 0), (5, 1, 2)])
@pytest.mark.parametrize("size", [(7, 7), (8, 9), (14, 14)])
@pytest.mark.parametrize("c", [3, 16, 24])
def test_max_pool_is_atens(one_thread, k, s, p, size, c):
    """The C++ channels-last max pool (`bitnas.space.pooling.MaxPool2d` in training) gives ATen's
    output and, bit for bit, ATen's input gradient: ties (small integers), NaN, −inf and −0
    pick the maxima ATen picks; the output gradient arrives as a strided channel slice."""
    from bitnas.space.pooling import MaxPool2d

    gen = torch.Generator().manual_seed(c + size[1])
    x = torch.randint(-3, 4, (4, c, *size), generator=gen).float()
    x.view(-1)[:7] = torch.tensor([float("nan"), -float("inf"), -0.0, 0.0, float("nan"), float("inf"), -float("inf")])
    x[1] = -float("inf")
    x = x.contiguous(memory_format=torch.channels_last)
    pool = MaxPool2d(k, stride=s, padding=p)
    assert torch.nn.MaxPool2d(k, stride=s, padding=p)(x).shape == pool(x).shape
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = pool(xa), F.max_pool2d(xb, k, s, p)
    assert ya.grad_fn is not None and "MaxPool" in type(ya.grad_fn).__name__ and type(ya.grad_fn) is not type(yb.grad_fn)
    assert torch.equal(bits(ya), bits(yb)) and ya.is_contiguous(memory_format=torch.channels_last)
    _, want_idx = F.max_pool2d(x, k, s, p, return_indices=True)
    assert torch.equal(fused.max_pool_forward(x, k, s, p)[1].long(), want_idx)  # the same maxima chosen
    wide = torch.randn(ya.shape[0], 2 * c, *ya.shape[2:], generator=gen).contiguous(memory_format=torch.channels_last)
    g = wide[:, c // 2:c // 2 + c]  # a channel slice, as a concatenation's backward hands out
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(bits(xa.grad), bits(xb.grad)) and xa.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("clip", [None, 1.0, 0.7])
def test_sign_grad_add_is_residual_plus_surrogate(torch_path, fmt, clip):
    """r + the surrogate gradient: the kernel against the torch sum of the two terms, r laid like x."""
    x, g = operands((64, 8, 28, 28), fmt)
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    r.view(-1)[-len(SPECIAL):] = torch.tensor(SPECIAL)
    r = r.contiguous(memory_format=fmt)
    got = fused.sign_grad_add(x, g, r, clip)
    want = r + (fused.approx_sign_grad(x, g) if clip is None else fused.ste_sign_grad(x, g, clip))
    assert torch.equal(bits(got), bits(want))
    assert torch.equal(bits(got), bits(torch_path(fused.sign_grad_add, x, g, r, clip)))


@pytest.mark.parametrize("c,total,offset,shape", [(8, 32, 8, (16, 7, 6)), (16, 64, 48, (4, 5, 1)),
                                                  (8, 16, 0, (1, 1, 3))])
def test_sign_grad_add_takes_a_concat_slice_residual(c, total, offset, shape):
    """r a channel slice of a wider channels-last gradient (a concatenation's backward): read in place."""
    n, h, w = shape
    x, g = operands((n, c, h, w), torch.channels_last, seed=c)
    big = torch.randn(n, total, h, w, generator=torch.Generator().manual_seed(9)).contiguous(
        memory_format=torch.channels_last)
    r = big[:, offset:offset + c]
    assert fused._residual_rows(x, r) is not None
    got = fused.sign_grad_add(x, g, r, None)
    assert torch.equal(bits(got), bits(r + fused.approx_sign_grad(x, g)))


def test_sign_grad_add_falls_back_for_other_residual_layouts():
    x, g = operands((4, 8, 5, 5), torch.channels_last)
    r = torch.randn(4, 5, 5, 16).permute(0, 3, 1, 2)[:, ::2]  # every other channel: no row structure
    assert fused._residual_rows(x, r) is None
    assert torch.equal(bits(fused.sign_grad_add(x, g, r, 1.0)), bits(r + fused.ste_sign_grad(x, g, 1.0)))


@pytest.mark.parametrize("shape", [(8, 1, 3, 3), (16, 8, 1, 1), (32, 24, 1, 1), (5, 3, 7, 1), (3,)])
@pytest.mark.parametrize("clip", [1.0, 0.7])
def test_scaled_sign_and_its_gradient_are_the_product_and_ste(torch_path, shape, clip):
    """α·sign(W) and 1[|W| ≤ clip]·(g·α): the kernels against the torch product and STE gradient."""
    w, g = operands(shape, torch.contiguous_format)
    alpha = w.abs().reshape(shape[0], -1).mean(1).reshape((shape[0],) + (1,) * (len(shape) - 1)) + 0.1
    assert torch.equal(bits(fused.scaled_sign(w, alpha)), bits(alpha * fused.sign(w)))
    want = fused.ste_sign_grad(w, g * alpha, clip)
    assert torch.equal(bits(fused.scaled_ste_sign_grad(w, g, alpha, clip)), bits(want))
    assert torch.equal(bits(torch_path(fused.scaled_ste_sign_grad, w, g, alpha, clip)), bits(want))


@pytest.mark.parametrize("c,addends", [(8, 1), (16, 2), (32, 0), (12, 1), (64, 0)])
def test_batch_norm_forward_keeps_the_sign_of_its_output(one_thread, c, addends):
    """`keep_sign`: the same output, and the sign it leaves is sign(output) (NaN included)."""
    x, _, w, _, _ = _bn_case((16, c, 5, 7), seed=c)
    x[0, 0, 0, 0] = float("nan")  # channel 0 all NaN: sign −1
    adds = tuple(torch.randn(x.shape).contiguous(memory_format=torch.channels_last) for _ in range(addends))
    b = torch.randn(c)
    plain = fused.batch_norm_forward(x, w, b, torch.zeros(c), torch.ones(c), 0.1, 1e-5, adds)
    kept = fused.batch_norm_forward(x, w, b, torch.zeros(c), torch.ones(c), 0.1, 1e-5, adds, keep_sign=True)
    assert all(torch.equal(bits(u), bits(v)) for u, v in zip(plain, kept))
    y = kept[0].requires_grad_()
    assert torch.equal(bits(fused.shared_sign(y)), bits(fused.sign(y)))
    assert fused.shared_sign(y).data_ptr() == getattr(y, fused._SIGN)[1].data_ptr()


@pytest.mark.parametrize("starts", [((0, 0), (1, 1)), ((1, 1), (0, 0), (0, 1))], ids=["reduce", "three"])
@pytest.mark.parametrize("size", [(7, 7), (8, 9), (28, 28)])
@pytest.mark.parametrize("c", [1, 8, 32])
def test_grid_gradient_is_zero_fill_plus_adds(one_thread, starts, size, c):
    """The gradient of stride-2 grids of one channels-last tensor in one pass (a factorised
    reduce's two grids): bit for bit zeros plus one add per grid (−0 → +0, NaN and ±inf kept);
    None (the torch path) where a grid has no gradient."""
    gen = torch.Generator().manual_seed(c + size[1])
    n, step = 3, (2, 2)
    shape = torch.Size((n, c, *size))
    grads = []
    for h0, w0 in starts:
        g = torch.randn(n, c, -(-(size[0] - h0) // 2), -(-(size[1] - w0) // 2), generator=gen)
        k = min(len(SPECIAL), g.numel())
        g.view(-1)[:k] = torch.tensor(SPECIAL[:k])
        g.masked_fill_(torch.rand(g.shape, generator=gen) < 0.3, -0.0)
        grads.append(g.contiguous(memory_format=torch.channels_last))
    got = fused.grid_gradient(tuple(grads), starts, step, shape)
    want = torch.zeros(shape).contiguous(memory_format=torch.channels_last)
    for (h0, w0), g in zip(starts, grads):
        want[:, :, h0::2, w0::2].add_(g)
    assert got is not None and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(bits(got), bits(want))
    assert fused.grid_gradient((grads[0], None, *grads[2:]), starts, step, shape) is None
