"""Export a trained network with its 1-bit kernels bit-packed, and load it back for inference.

An export holds the architecture (genotype + build arguments, as in checkpoints), for every
binarised conv its sign bits packed 8 per byte (sign(0) = +1, row-major over the kernel) and its
per-output-channel scale α, and every other tensor (stem, classifier, BatchNorm, PReLU, ...) in
fp32. The auxiliary head and the optimiser state are left out. The loader rebuilds the network
with `network_from_spec` (no training or search code) and freezes each binarised conv on the
kernel α·sign(W) made of the stored bits and α — the very product the trained layer used — so
the loaded network computes bitwise what the trained one computed (exactness matters: a sign
taken of a binary conv's output flips on rounding noise where the ±α terms cancel), and it no
longer re-binarises its weights in every forward. Files are written atomically and read with
`weights_only=True`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bitnas.binary import BinaryConv2d, binarized_layers
from bitnas.errors import BitnasError
from bitnas.nets import network_from_checkpoint, network_from_spec
from bitnas.utils import load_checkpoint, save_checkpoint

FORMAT = "bitnas-export"
VERSION = 1
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_signs(w: Tensor) -> Tensor:
    """The signs of `w` (1 for ≥ 0) packed 8 per uint8, most significant bit first."""
    bits = (w.detach().flatten() >= 0).to(torch.uint8).cpu()
    pad = (-bits.numel()) % 8
    bits = torch.cat([bits, bits.new_zeros(pad)]).view(-1, 8)
    return (bits * _BIT_WEIGHTS).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_signs(packed: Tensor, shape: tuple[int, ...] | list[int]) -> Tensor:
    """±1 float32 tensor of `shape` from `pack_signs` output."""
    n = math.prod(int(s) for s in shape)
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise BitnasError(f"packed kernel of {packed.numel()} bytes does not hold {n} signs")
    bits = (packed.view(-1, 1) & _BIT_WEIGHTS).ne(0).flatten()[:n]
    return (bits.to(torch.float32) * 2 - 1).view(*shape)


def _is_aux(key: str) -> bool:
    return key.startswith("auxiliary_head.")


def export_network(model: nn.Module, arch: dict[str, Any], image_size: int | None = None) -> dict[str, Any]:
    """The export dict of `model` (a fixed network built from `arch`).

    Tensors are stored as three flat blobs (packed bits, α, other fp32 tensors) with an index of
    (name, shape, offset) rows: one record each instead of hundreds of tiny ones keeps the file
    close to its payload.
    """
    bits, alphas, binary, packed_keys = [], [], [], set()
    n_bytes = n_alpha = 0
    for name, layer in binarized_layers(model):
        b = pack_signs(layer.weight)
        a = layer.alpha().detach().reshape(-1).float().cpu()
        binary.append([name, list(layer.weight.shape), n_bytes, n_alpha])
        bits.append(b)
        alphas.append(a)
        n_bytes += b.numel()
        n_alpha += a.numel()
        packed_keys.update({f"{name}.weight", f"{name}.scale"})
    floats, index, ints, n_float = [], [], {}, 0
    for key, t in model.state_dict().items():
        if key in packed_keys or _is_aux(key):
            continue
        if t.is_floating_point():
            index.append([key, list(t.shape), n_float])
            floats.append(t.detach().float().cpu().reshape(-1))
            n_float += t.numel()
        else:
            ints[key] = t.detach().cpu().tolist()
    network = dict(arch["network"], auxiliary=False, drop_path_prob=0.0)
    return {"format": FORMAT, "version": VERSION, "arch": {"genotype": arch["genotype"], "network": network},
            "image_size": image_size, "binary": binary, "fp32_index": index, "ints": ints,
            "bits": torch.cat(bits) if bits else torch.zeros(0, dtype=torch.uint8),
            "alpha": torch.cat(alphas) if alphas else torch.zeros(0),
            "fp32": torch.cat(floats) if floats else torch.zeros(0)}


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Export the network of a bitnas training checkpoint to `out`; returns size figures."""
    ck = load_checkpoint(checkpoint)
    model = network_from_checkpoint(ck, str(checkpoint))
    exp = export_network(model, ck["arch"], ck.get("image_size"))
    save_checkpoint(out, exp)
    return export_sizes(exp, Path(out))


def export_sizes(exp: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bytes of the packed kernels (+ α), of the fp32 tensors, of the file, and of the fp32 network."""
    n_bits = sum(math.prod(shape) for _, shape, _, _ in exp["binary"])
    packed = exp["bits"].numel() + 4 * exp["alpha"].numel()
    fp32 = 4 * exp["fp32"].numel()
    return {"out": str(path), "binary_layers": len(exp["binary"]), "binary_weights": n_bits,
            "packed_bytes": packed, "fp32_bytes": fp32, "file_bytes": path.stat().st_size,
            "fp32_model_bytes": 4 * n_bits + fp32}


def is_export(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def network_from_export(exp: dict[str, Any], source: str = "export") -> nn.Module:
    """Rebuild the network of an export dict, in eval mode."""
    if not is_export(exp):
        raise BitnasError(f"{source}: not a bitnas export")
    if exp.get("version") != VERSION:
        raise BitnasError(f"{source}: export version {exp.get('version')} not supported (this bitnas reads {VERSION})")
    model = network_from_spec(exp["arch"])
    layers = dict(binarized_layers(model))
    if set(layers) != {row[0] for row in exp["binary"]}:
        raise BitnasError(f"{source}: binarised layers do not match the stored architecture")
    state: dict[str, Tensor] = {k: torch.tensor(v) for k, v in exp["ints"].items()}
    for key, shape, off in exp["fp32_index"]:
        state[key] = exp["fp32"][off:off + math.prod(shape)].view(shape)
    kernels: dict[str, Tensor] = {}
    for name, shape, off, a_off in exp["binary"]:
        layer: BinaryConv2d = layers[name]
        if list(layer.weight.shape) != list(shape):
            raise BitnasError(f"{source}: kernel {name} has shape {shape}, the network wants "
                              f"{list(layer.weight.shape)}")
        signs = unpack_signs(exp["bits"][off:off + (math.prod(shape) + 7) // 8], shape)
        alpha = exp["alpha"][a_off:a_off + shape[0]].view(-1, 1, 1, 1)
        kernels[name] = alpha * signs
        state[f"{name}.weight"] = signs if layer.weight_scale in ("learned", "none") else kernels[name]
        if layer.weight_scale == "learned":
            state[f"{name}.scale"] = alpha.clone()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise BitnasError(f"{source}: tensors do not fit the stored architecture ({str(e).splitlines()[0][:200]})") from None
    for name, kernel in kernels.items():
        layers[name].freeze(kernel)
    return model.eval()


def load_export(path: str | Path) -> nn.Module:
    """Load an export file (weights_only) and rebuild its network for inference."""
    return network_from_export(load_checkpoint(path), str(path))
