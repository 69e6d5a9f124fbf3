"""Whole exported networks through the bitpack engine against the float path and a float64 reference.

The binary convolutions of the engine are exact integers, so its logits differ from a float64
evaluation of the same network only by float32 rounding in the real-valued parts — except where
a value whose sign is taken lies within float32 rounding of zero (a real-valued residual stream
makes such values possible); there float32 cannot decide the sign the way float64 does, for the
engine as for torch's own float32 path. Images whose float64 evaluation has such a value
(0 < |v| < 1e-6·max|v| at some sign) are counted, must be rare, and are left out of the 1e-4 check.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bitnas.binary import BinaryConv2d
from bitnas.binary.quantizers import LearnableBiasSign
from bitnas.data import load_dataset
from bitnas.data.formats.embedded import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from bitnas.deploy import arena as arena_module
from bitnas.deploy import engine, export_network, network_from_export
from bitnas.deploy.network import EngineNetwork
from bitnas.nets import arch_spec, build_network
from bitnas.space.genotypes import GENOTYPES
from bitnas.space.structures import STRUCTURES

pytestmark = pytest.mark.skipif(not engine.available(), reason="C++ extension not built")
# Every optimised row of the ISA table this machine runs, fastest first (the reference row is
# too slow for whole networks; the kernel tests hold it equal to the others).
ISAS = [i for i in reversed(engine.supported_isas()) if i != "reference"] if engine.available() else []
AMBIGUOUS = 1e-6


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]


def embedded_images() -> dict[str, torch.Tensor]:
    """The embedded Fashion-MNIST test split and 1,024 training images, normalised (also read by
    scripts/onnx_acceptance.py)."""
    test, train = load_dataset("fashion-mnist-embedded", "test"), load_dataset("fashion-mnist-embedded", "train")
    return {"x": _normalise(test.images), "y": test.labels, "x_train": _normalise(train.images[:1024]),
            "y_train": train.labels[:1024]}


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return embedded_images()


def hand_designed(blocks: str, pad_value: float, data: dict[str, torch.Tensor]) -> tuple[nn.Module, dict]:
    """A binary hand-designed network (`bireal`, `reactnet`) with random weights and BN statistics of
    128 real images, in eval mode, and its arch spec."""
    torch.manual_seed(0)
    kw = dict(blocks=blocks, precision="binary", structure=blocks, init_channels=4, layers=3, num_classes=10,
              in_channels=1, pad_value=pad_value)
    net = build_network(None, **kw)
    net.train()
    with torch.no_grad():
        net(data["x_train"][:128])
    return net.eval(), arch_spec(None, **kw)


def calibrated(structure: str, pad_value: float, data: dict[str, torch.Tensor], c: int = 8, probe: bool = False,
               seed: int = 1, batches: int = 4) -> tuple[nn.Module, dict]:
    """A binary DARTS_V2 network with random weights, BN statistics of real images and (probe=True)
    a classifier fitted by ridge regression on its own features, so its top-1 means something."""
    torch.manual_seed(seed)
    kw = dict(style="cifar", precision="binary", structure=structure, init_channels=c, layers=3, num_classes=10,
              in_channels=1, pad_value=pad_value)
    net = build_network(GENOTYPES.get("DARTS_V2"), **kw)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(batches):
            net(data["x_train"][128 * i:128 * (i + 1)])
        net.eval()
        if probe:
            feats = torch.cat([(net(data["x_train"][i:i + 256]), net.last_features)[1]
                               for i in range(0, 1024, 256)]).double()
            feats = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)
            target = torch.nn.functional.one_hot(data["y_train"], 10).double()
            w = torch.linalg.solve(feats.T @ feats + 1e-2 * torch.eye(feats.shape[1], dtype=torch.float64),
                                   feats.T @ target)
            net.classifier.weight.copy_(w[:-1].T.float())
            net.classifier.bias.copy_(w[-1].float())
    return net, arch_spec(GENOTYPES.get("DARTS_V2"), **kw)


def float64_reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of `model` in float64 and, per image, whether a sign was taken of a value within
    float32 rounding of zero (0 < |v| < AMBIGUOUS·max|v| in that tensor for that image)."""
    ref = copy.deepcopy(model).double()
    ambiguous = torch.zeros(len(x), dtype=torch.bool)

    def note(v: torch.Tensor) -> None:
        a = v.detach().abs().flatten(1)
        scale = a.max(1, keepdim=True).values
        ambiguous.logical_or_((a > 0).logical_and(a < AMBIGUOUS * scale).any(1))

    hooks = []
    for m in ref.modules():
        if isinstance(m, BinaryConv2d) and m.is_binary and m.input_quantizer is not None:
            hooks.append(m.register_forward_pre_hook(lambda mod, args: note(args[0])))
        elif isinstance(m, LearnableBiasSign):
            hooks.append(m.register_forward_pre_hook(lambda mod, args: note(args[0] + mod.bias)))
    with torch.no_grad():
        logits = ref(x.double())[0]
    for h in hooks:
        h.remove()
    return logits, ambiguous


def relative_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Per image: max |got − want| / max |want|."""
    return (got.double() - want).abs().amax(1) / want.abs().amax(1)


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("structure", STRUCTURES.names())
def test_engine_logits_equal_a_float64_reference(structure: str, pad_value: float, data) -> None:
    net, spec = calibrated(structure, pad_value, data, c=4)
    exp = export_network(net, spec)
    floats = network_from_export(exp)
    x = data["x"][:100]
    want, ambiguous = float64_reference(floats, x)
    for isa in ISAS if (structure, pad_value) in (("bireal", 0.0), ("cpnas", 1.0)) else ISAS[:1]:
        eng = EngineNetwork(network_from_export(exp), exp, isa=isa)
        assert eng.units > 0
        with torch.no_grad():
            got = eng(x)[0]
        err = relative_error(got, want)
        assert ambiguous.float().mean() < 0.25, "most images must be checked"
        assert err[~ambiguous].max() < 1e-4, f"{isa}: {err[~ambiguous].max():.2e}"


@pytest.mark.parametrize("structure,pad_value", [("bireal", 0.0), ("cpnas", 1.0)])
def test_engine_top1_equals_float_path_on_the_embedded_test_images(structure: str, pad_value: float, data) -> None:
    net, spec = calibrated(structure, pad_value, data, c=4, probe=True)
    exp = export_network(net, spec)
    floats, eng = network_from_export(exp), EngineNetwork(network_from_export(exp), exp)
    x = data["x"]
    with torch.no_grad():
        f = torch.cat([floats(x[i:i + 500])[0] for i in range(0, len(x), 500)])
        e = torch.cat([eng(x[i:i + 500])[0] for i in range(0, len(x), 500)])
    accuracy = (e.argmax(1) == data["y"]).float().mean().item()
    assert accuracy > 0.4, "the probe-trained network should classify far better than chance"
    assert torch.equal(e.argmax(1), f.argmax(1))
    # the probe-fitted logits against float64 too, on the first 200 (float64 costs more than the rest)
    want, ambiguous = float64_reference(floats, x[:200])
    err = relative_error(e[:200], want)
    assert ambiguous.float().mean() < 0.25, "most images must be checked"
    assert err[~ambiguous].max() < 1e-4


def test_engine_threads_and_isas_agree(data) -> None:
    net, spec = calibrated("bireal", 0.0, data, c=8)
    exp = export_network(net, spec)
    x = data["x"][:32]
    outs = []
    for isa in ISAS:
        for threads in (1, 3):
            with torch.no_grad():
                outs.append(EngineNetwork(network_from_export(exp), exp, isa=isa, threads=threads)(x)[0])
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_every_binary_conv_runs_on_the_kernels(data) -> None:
    """No binary op falls back to torch, in every structure and in the hand-designed networks."""
    for structure in STRUCTURES.names():
        net, spec = calibrated(structure, 0.0, data, c=4, batches=1)
        exp = export_network(net, spec)
        assert EngineNetwork(network_from_export(exp), exp).units == len(exp["binary"]), structure


@pytest.mark.parametrize("blocks", ["bireal", "reactnet"])
def test_hand_designed_networks_through_the_engine(blocks: str, data) -> None:
    torch.manual_seed(0)
    kw = dict(blocks=blocks, precision="binary", structure=blocks, init_channels=4, layers=3, num_classes=10,
              in_channels=1)
    net = build_network(None, **kw)
    net.train()
    with torch.no_grad():
        net(data["x_train"][:128])
    net.eval()
    exp = export_network(net, arch_spec(None, **kw))
    eng = EngineNetwork(network_from_export(exp), exp)
    assert eng.units == len(exp["binary"]) > 0
    x = data["x"][:100]
    want, ambiguous = float64_reference(network_from_export(exp), x)
    with torch.no_grad():
        got = eng(x)[0]
    err = relative_error(got, want)
    assert ambiguous.float().mean() < 0.25
    assert err[~ambiguous].max() < 1e-4


@pytest.mark.parametrize("structure", ["bireal", "cpnas"])
def test_reused_buffers_never_leak_between_forwards(structure: str, data, monkeypatch) -> None:
    """The network's arena hands each unit last forward's buffers (every size kept here): forwards
    of other inputs and other batch sizes in between leave every result equal to a fresh
    network's, and a repeated forward reuses (does not reallocate) the units' outputs."""
    monkeypatch.setattr(arena_module, "MIN_BYTES", 0)
    net, spec = calibrated(structure, 0.0, data, c=4, batches=1)
    exp = export_network(net, spec)
    engine_net = EngineNetwork(network_from_export(exp), exp)
    xs = [data["x"][:16], data["x"][16:48], data["x"][48:64]]
    fresh = [EngineNetwork(network_from_export(exp), exp)(x)[0] for x in xs]
    for _ in range(2):
        for x, want in zip(xs, fresh):
            assert torch.equal(engine_net(x)[0], want)
    held = {k: v[1] for k, v in engine_net.arena._local.bufs.items()}
    engine_net(xs[2])
    assert held and all(engine_net.arena._local.bufs[k][1] is v for k, v in held.items())


def test_sub_batches_give_the_whole_batch_logits_bit_for_bit(data) -> None:
    """A memory-bound network runs its cells a few images at a time; every row and thread count
    gives the logits of one pass over the whole batch (a remainder chunk included)."""
    net, spec = calibrated("bireal", 0.0, data, c=8, batches=1)
    exp = export_network(net, spec)
    x = data["x"][:11]
    for isa in ISAS:
        for threads in (1, 2):
            chunked = EngineNetwork(network_from_export(exp), exp, isa=isa, threads=threads)
            whole = EngineNetwork(network_from_export(exp), exp, isa=isa, threads=threads)
            assert 0 < chunked.chunk < len(x) and len(x) % chunked.chunk
            whole.chunk = 0
            with torch.no_grad():
                assert torch.equal(chunked(x)[0], whole(x)[0]), (isa, threads)


def test_cells_with_a_float_conv_run_the_whole_batch_at_once(data) -> None:
    """Bi-Real's downsample shortcut is an fp32 conv, whose result may depend on the batch size:
    such cells are never split."""
    net, spec = hand_designed("bireal", 0.0, data)
    exp = export_network(net, spec)
    assert any(type(m) is nn.Conv2d for m in network_from_export(exp).cells.modules())
    assert EngineNetwork(network_from_export(exp), exp).chunk == 0
