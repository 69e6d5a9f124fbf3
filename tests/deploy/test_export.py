"""Bit-packed export: exact bit packing, and an exported network computes what the trained one did."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bitnas.binary import binarized_layers
from bitnas.cli import main
from bitnas.deploy import export_network, load_export, network_from_export, pack_signs, unpack_signs
from bitnas.nets import arch_spec, build_network
from bitnas.space.genotypes import GENOTYPES
from bitnas.space.structures import STRUCTURES
from bitnas.common.checkpoint import save_checkpoint


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1000])
def test_pack_matches_numpy_packbits_and_round_trips(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g)
    w[::3] = 0.0  # sign(0) = +1
    expected = np.packbits((w.numpy() >= 0).astype(np.uint8))
    packed = pack_signs(w)
    assert packed.dtype == torch.uint8 and np.array_equal(packed.numpy(), expected)
    assert torch.equal(unpack_signs(packed, [n]), torch.where(w >= 0, 1.0, -1.0))


def _trained_like(weight_scale: str, structure: str = "cpnas", auxiliary: bool = True) -> tuple[torch.nn.Module, dict]:
    """A small binary DARTS_V2 network with random weights, learned scales and BN statistics."""
    torch.manual_seed(0)
    kw = dict(style="cifar", precision="binary", structure=structure, init_channels=4, layers=3, num_classes=10,
              in_channels=1, auxiliary=auxiliary, weight_scale=weight_scale)
    net = build_network(GENOTYPES.get("DARTS_V2"), **kw)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net.train()
    for _ in range(3):
        net(torch.randn(8, 1, 28, 28))
    return net.eval(), arch_spec(GENOTYPES.get("DARTS_V2"), **kw)


@pytest.mark.parametrize("weight_scale", ["channel", "layer", "learned", "none"])
@pytest.mark.parametrize("structure", STRUCTURES.names())
def test_exported_network_reproduces_kernels_and_logits(weight_scale: str, structure: str) -> None:
    net, spec = _trained_like(weight_scale, structure)
    loaded = network_from_export(export_network(net, spec))
    assert loaded.auxiliary_head is None and not loaded.training
    ours, theirs = dict(binarized_layers(net)), dict(binarized_layers(loaded))
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for name, layer in ours.items():
        assert torch.equal(theirs[name].binary_weight(), layer.binary_weight())
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], net(x)[0])


def test_export_file_is_small_and_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 fmnist_writer) -> None:
    net, spec = _trained_like("channel")
    ck = tmp_path / "last.pt"
    save_checkpoint(ck, {"arch": spec, "model": net.state_dict(), "epoch": 1})
    out = tmp_path / "model.bitnas"
    assert main(["export", str(ck), "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    n_1bit = sum(m.weight.numel() for _, m in binarized_layers(net))
    assert r["binary_weights"] == n_1bit
    n_alpha = sum(m.weight.shape[0] for _, m in binarized_layers(net))
    assert r["packed_bytes"] == sum((m.weight.numel() + 7) // 8 for _, m in binarized_layers(net)) + 4 * n_alpha
    assert out.stat().st_size < ck.stat().st_size / 2
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_export(out)(x)[0], net(x)[0])

    fmnist_writer(tmp_path / "fm", gz=False)
    results = []
    for path in (ck, out):
        assert main(["eval", str(path), "--data", f"fashion-mnist:{tmp_path / 'fm'}", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["top1"] == results[1]["top1"] and results[0]["num_images"] == results[1]["num_images"] == 20
    assert results[0]["loss"] == results[1]["loss"]


def test_export_refuses_what_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    assert main(["export", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "notes.pt" in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


class _UnknownHolder(torch.nn.Module):
    """A module the engine's table does not know, holding a binary conv and the BN after it."""

    def __init__(self, conv: torch.nn.Module, bn: torch.nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def test_export_refuses_a_binary_conv_in_a_module_the_engine_does_not_know() -> None:
    from bitnas.errors import BitnasError

    net, spec = _trained_like("channel", "cpnas", auxiliary=False)
    name = next(n for n, _ in binarized_layers(net) if n.endswith(".conv"))
    holder_name = name.rpartition(".")[0]
    holder = net.get_submodule(holder_name)
    parent_name, _, attr = holder_name.rpartition(".")
    setattr(net.get_submodule(parent_name), attr, _UnknownHolder(holder.conv, holder.bn))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        net(x)  # still a working network: only the export refuses it
    with pytest.raises(BitnasError) as e:
        export_network(net, spec)
    msg = str(e.value)
    assert "\n" not in msg and f"binary conv {name} " in msg and "_UnknownHolder" in msg
