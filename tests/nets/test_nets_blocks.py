"""Hand-designed networks (Bi-Real, ReActNet blocks) in the genotype networks' skeleton."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bitnas.binary import BinaryConv2d, binarized_layers
from bitnas.errors import ConfigError
from bitnas.nets import arch_spec, build_network, network_from_spec
from bitnas.nets.blocks import BLOCKS
from bitnas.summary import summarize
from bitnas.train.config import TrainConfig
from bitnas.train.evaluate import evaluate_checkpoint
from bitnas.train.job import train


def _net(name: str, precision: str = "binary", c: int = 8, layers: int = 3):
    return build_network(None, blocks=name, precision=precision, init_channels=c, layers=layers, num_classes=10,
                         in_channels=1)


def test_bireal_parameter_counts_match_the_closed_form() -> None:
    """C=8, 3 cells on 1×28×28: widths 32 → 64 → 128; counted by hand from the block definition."""
    c = 32
    convs_1bit = 2 * 9 * c * c + 9 * c * 2 * c + 9 * (2 * c) ** 2 + 9 * 2 * c * 4 * c + 9 * (4 * c) ** 2
    stem = 9 * c + 2 * c
    bns = 2 * (2 * c) + 2 * (2 * c) + 2 * (2 * c) + 2 * (4 * c) + 2 * (4 * c)
    downsample = (c * 2 * c + 2 * 2 * c) + (2 * c * 4 * c + 2 * 4 * c)
    classifier = 4 * c * 10 + 10
    s = summarize(_net("bireal"), (1, 28, 28))
    assert s.params_1bit == convs_1bit == 294912
    assert s.params_32bit == stem + bns + downsample + classifier


@pytest.mark.parametrize("name", BLOCKS.names())
@pytest.mark.parametrize("layers", [3, 5])
def test_forward_shapes_and_binarised_convs(name: str, layers: int) -> None:
    net = _net(name, layers=layers)
    logits, aux = net(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10) and aux is None
    binary = [m for _, m in binarized_layers(net)]
    cells_convs = [m for m in net.cells.modules() if isinstance(m, BinaryConv2d)]
    assert binary and all(m.is_binary for m in cells_convs) and len(binary) == len(cells_convs)
    parent = _net(name, "fp32", layers=layers)
    assert not binarized_layers(parent)
    # the parent has every conv kernel of the child under the same name and shape (CP kernel loss)
    p = dict(parent.named_parameters())
    for n, m in net.named_modules():
        if isinstance(m, BinaryConv2d):
            assert p[f"{n}.weight"].shape == m.weight.shape


def test_spec_round_trip_and_refusals() -> None:
    kw = dict(blocks="reactnet", precision="binary", init_channels=4, layers=3, num_classes=10, in_channels=1)
    net = build_network(None, **kw)
    again = network_from_spec(arch_spec(None, **kw))
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, 28, 28)
    net.eval(), again.eval()
    assert torch.equal(net(x)[0], again(x)[0])
    with pytest.raises(ConfigError, match="hand-designed network 'foo'"):
        build_network(None, blocks="foo")
    with pytest.raises(ConfigError, match="auxiliary"):
        build_network(None, blocks="bireal", auxiliary=True)
    with pytest.raises(ConfigError, match="genotype"):
        build_network(None)


def test_train_and_eval_a_hand_designed_network(tmp_path: Path) -> None:
    cfg = TrainConfig(network="bireal", data="fashion-mnist-embedded", init_channels=2, layers=3, batch_size=32,
                      epochs=1, train_subset=100, test_subset=50, progress="off", threads=1,
                      out=str(tmp_path / "r")).validate()
    res = train(cfg)
    again = evaluate_checkpoint(res["best"], "fashion-mnist-embedded")
    assert again["num_images"] == 2000 and 0.0 <= again["top1"] <= 100.0
    with pytest.raises(ConfigError, match="unknown hand-designed network"):
        TrainConfig(network="resnet").validate()
