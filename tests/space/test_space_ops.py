"""Every op of every space, both precisions and strides, every module structure: shapes, gradients, twins."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bitnas.binary import BinaryConv2d, Quantizer, binarized_layers
from bitnas.errors import ConfigError
from bitnas.nets import build_network
from bitnas.space import OPS, SPACES, STRUCTURES, OpConfig, build_op, get_space
from bitnas.space.genotypes import GENOTYPES

torch.set_num_threads(1)

N, C, H = 2, 8, 8
PRECISIONS = ("fp32", "binary")


def _convs(m: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: c for n, c in m.named_modules() if isinstance(c, nn.Conv2d)}


def _is_conv_op(name: str) -> bool:
    return bool(_convs(build_op(name, 4, 1, OpConfig(precision="fp32"))))


CONV_OPS = [o for o in OPS.names() if _is_conv_op(o)]


def _uses_structure(name: str) -> bool:
    """Whether the binary build of `name` changes with the module structure (else one structure suffices)."""
    kinds = {tuple(type(m).__name__ for m in build_op(name, 4, 1, OpConfig(structure=s)).modules())
             for s in STRUCTURES.names()}
    return len(kinds) > 1


STRUCTURED_OPS = [o for o in CONV_OPS if _uses_structure(o)]
SPACE_CASES = [(s, o) for s in SPACES.names() for o in SPACES.get(s).ops]


def _run(name: str, stride: int, cfg: OpConfig, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    op = build_op(name, C, stride, cfg)
    op.train()
    x = torch.randn(N, C, H, H, requires_grad=True)
    out = op(x)
    # a random projection: a plain sum would give zero gradients behind a training-mode BN
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    (out * r).sum().backward()
    return op, out


def _check_op(name: str, stride: int, cfg: OpConfig) -> None:
    op, out = _run(name, stride, cfg)
    assert out.shape == (N, C, H // stride, H // stride), (name, stride, cfg)
    assert torch.isfinite(out).all()
    for pname, p in op.named_parameters():
        assert p.grad is not None, f"{name} s{stride} {cfg.precision}/{cfg.structure}: {pname} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} gradient not finite"
    convs = _convs(op)
    for cname, conv in convs.items():
        assert conv.weight.grad.abs().sum() > 0, f"{name} {cfg.precision}/{cfg.structure}: {cname} zero gradient"
    binary = [n for n, _ in binarized_layers(op)]
    if cfg.binary:
        # inside an op every conv is 1-bit in the child (structures may not leave fp32 convs behind)
        assert sorted(binary) == sorted(convs), (name, binary, list(convs))
        if name in CONV_OPS:
            assert binary
    else:
        assert binary == []
        assert not any(isinstance(m, BinaryConv2d) and (m.input_quantizer is not None) for m in op.modules())
        assert not any(isinstance(m, Quantizer) for m in op.modules()), f"{name}: quantizer in the fp32 parent"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("space,op_name", SPACE_CASES, ids=[f"{s}-{o}" for s, o in SPACE_CASES])
def test_space_op_forward_backward(space, op_name, precision, stride):
    sp = get_space(space)
    cfg = OpConfig(precision=precision, structure=sp.structure, activation=sp.activation)
    _check_op(op_name, stride, cfg)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("structure", STRUCTURES.names())
@pytest.mark.parametrize("op_name", STRUCTURED_OPS)
def test_conv_op_every_structure(op_name, structure, precision, stride):
    _check_op(op_name, stride, OpConfig(precision=precision, structure=structure))


@pytest.mark.parametrize("activation", ["approx_sign", "swish_sign"])
@pytest.mark.parametrize("weight_scale", ["layer", "learned", "none"])
def test_conv_op_quantizer_and_scale_options(activation, weight_scale):
    cfg = OpConfig(precision="binary", structure="cpnas", activation=activation, weight_scale=weight_scale)
    _check_op("sep_conv_3x3", 2, cfg)
    _check_op("dil_conv_5x5", 1, cfg.with_(structure="reactnet", pad_value=1.0))


@pytest.mark.parametrize("op_name", sorted(set(CONV_OPS) - set(STRUCTURED_OPS)))
@pytest.mark.parametrize("precision", PRECISIONS)
def test_conv_op_without_structure(op_name, precision):
    for stride in (1, 2):
        _check_op(op_name, stride, OpConfig(precision=precision))


def test_conv_ops_cover_the_expected_names():
    for o in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_3x3", "conv_5x5",
              "dil_full_conv_3x3", "dil_full_conv_5x5"):
        assert o in CONV_OPS
    for o in ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"):
        assert o not in CONV_OPS
    assert {"sep_conv_3x3", "dil_conv_5x5", "conv_3x3", "dil_full_conv_5x5"} <= set(STRUCTURED_OPS)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("structure", STRUCTURES.names())
@pytest.mark.parametrize("op_name", CONV_OPS + ["skip_connect"])
def test_parent_child_twins_share_conv_names_and_kernel_shapes(op_name, structure, stride):
    torch.manual_seed(0)
    parent = build_op(op_name, C, stride, OpConfig(precision="fp32", structure=structure))
    child = build_op(op_name, C, stride, OpConfig(precision="binary", structure=structure))
    pc, cc = _convs(parent), _convs(child)
    assert list(pc) == list(cc)
    for n in pc:
        assert isinstance(pc[n], BinaryConv2d) and isinstance(cc[n], BinaryConv2d)
        assert pc[n].weight.shape == cc[n].weight.shape
        assert (pc[n].stride, pc[n].padding, pc[n].dilation, pc[n].groups) == \
            (cc[n].stride, cc[n].padding, cc[n].dilation, cc[n].groups)
        assert not pc[n].is_binary and cc[n].is_binary
    # the parent's conv weights load into the child by name
    sd = {k: v for k, v in parent.state_dict().items() if any(k == f"{n}.weight" for n in pc)}
    missing, unexpected = child.load_state_dict(sd, strict=False)
    assert not unexpected


def test_known_op_shapes_darts_reference():
    """Kernel shapes of DARTS' ops (operations.py): SepConv = two dw k×k + pw 1×1 units, DilConv one."""
    cfg = OpConfig(precision="fp32", structure="darts")
    shapes = {n: tuple(c.weight.shape) for n, c in _convs(build_op("sep_conv_5x5", C, 1, cfg)).items()}
    assert sorted(shapes.values()) == sorted([(C, 1, 5, 5), (C, C, 1, 1)] * 2)
    dil = _convs(build_op("dil_conv_3x3", C, 2, cfg))
    assert sorted(tuple(c.weight.shape) for c in dil.values()) == [(C, 1, 3, 3), (C, C, 1, 1)]
    dw = [c for c in dil.values() if c.groups == C][0]
    assert dw.dilation == (2, 2) and dw.padding == (2, 2) and dw.stride == (2, 2)
    fr = _convs(build_op("skip_connect", C, 2, cfg))
    assert sorted(tuple(c.weight.shape) for c in fr.values()) == [(C // 2, C, 1, 1)] * 2


def _binary_net(structure: str = "cpnas", **kw) -> nn.Module:
    return build_network(GENOTYPES.get("PC_DARTS_cifar"), precision="binary", structure=structure,
                         init_channels=8, layers=3, **kw)


@pytest.mark.parametrize("structure", STRUCTURES.names())
def test_binary_child_layers_see_only_pm1_inputs_and_pm_alpha_weights(structure):
    torch.manual_seed(0)
    net = _binary_net(structure, activation="approx_sign")
    layers = binarized_layers(net)
    assert layers
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(mod, inputs):
            x = inputs[0]
            q = mod.input_quantizer(x) if mod.input_quantizer is not None else x
            seen[name] = q.detach()
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    try:
        net(torch.randn(2, 3, 16, 16))
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == {n for n, _ in layers}
    for n, q in seen.items():
        assert set(q.unique().tolist()) <= {-1.0, 1.0}, f"{n} sees non-binary input {q.unique()[:5]}"
        # not degenerate: a ReLU before the sign would make every input +1
        assert set(q.unique().tolist()) == {-1.0, 1.0}, f"{n} sees a constant input"
    for n, m in layers:
        bw = m.binary_weight().detach()
        mags = bw.abs().flatten(1)
        assert torch.equal(mags.amax(1), mags.amin(1)), f"{n}: more than one magnitude per output channel"
        assert (mags[:, 0] > 0).all()
        torch.testing.assert_close(mags[:, 0], m.weight.detach().abs().flatten(1).mean(1))
    # stem and classifier stay full precision
    assert not any(n.startswith(("stem", "classifier")) for n, _ in layers)
    # every conv inside the cells is 1-bit
    cell_convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and n.startswith("cells.")]
    assert sorted(cell_convs) == sorted(n for n, _ in layers)


def test_fp32_network_has_no_binary_layers():
    net = build_network(GENOTYPES.get("DARTS_V2"), precision="fp32", init_channels=8, layers=3)
    assert binarized_layers(net) == []


def test_binary_preprocess_false_keeps_preprocessing_fp32():
    net = _binary_net(binary_preprocess=False)
    names = [n for n, _ in binarized_layers(net)]
    assert names and not any("preprocess" in n for n in names)
    assert any("preprocess" in n for n, m in net.named_modules() if isinstance(m, nn.Conv2d))


# ---------------------------------------------------------------- spaces, registries, OpConfig


@pytest.mark.parametrize("space", SPACES.names())
def test_space_ops_and_structure_are_registered(space):
    sp = get_space(space)
    assert sp.ops and len(set(sp.ops)) == len(sp.ops)
    assert all(o in OPS for o in sp.ops)
    assert sp.structure in STRUCTURES
    assert sp.zero_op not in sp.without_zero()


def test_darts_space_is_the_eight_darts_primitives():
    assert tuple(get_space("darts").ops) == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def test_unknown_names_raise_config_error_with_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'sep_conv_3x3'"):
        build_op("sep_conv3x3", C, 1, OpConfig())
    with pytest.raises(ConfigError, match="known"):
        get_space("nope_space")
    with pytest.raises(ConfigError, match="structure"):
        OpConfig(structure="bireel")
    with pytest.raises(ConfigError, match="precision"):
        OpConfig(precision="int8")
    with pytest.raises(ConfigError, match="quantizer"):
        OpConfig(activation="sgn")


def test_zero_op_outputs_zeros():
    x = torch.randn(N, C, H, H)
    assert torch.equal(build_op("none", C, 1, OpConfig())(x), torch.zeros_like(x))
    assert torch.equal(build_op("zero", C, 2, OpConfig())(x), torch.zeros(N, C, H // 2, H // 2))


def test_skip_connect_stride_one_is_identity():
    x = torch.randn(N, C, H, H)
    assert torch.equal(build_op("skip_connect", C, 1, OpConfig())(x), x)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("structure", STRUCTURES.names())
def test_all_ops_agree_on_odd_input_sizes(structure, precision):
    """A node sums the outputs of different ops: on odd maps (7×7 from 28×28 inputs) every op must give
    the same size, ⌈7/2⌉ = 4 when reducing."""
    cfg = OpConfig(precision=precision, structure=structure)
    x = torch.randn(2, C, 7, 7)
    for stride, side in ((1, 7), (2, 4)):
        shapes = {name: tuple(build_op(name, C, stride, cfg)(x).shape) for name in OPS.names()}
        assert set(shapes.values()) == {(2, C, side, side)}, shapes
