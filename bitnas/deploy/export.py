"""Export a trained network with its 1-bit kernels bit-packed, and load it back for inference.

An export (a `.bitnas` container, see `container.py`) holds:
- the architecture: genotype + every build argument resolved (module structure, activation,
  weight scale, padding value, ...), so a later default can never change what is rebuilt;
- the input: normalisation mean/std, image size, channels, dataset and class names;
- per binarised conv: its sign bits packed 8 per byte (sign(0) = +1, row-major over the
  kernel), its per-output-channel α, its geometry, the BatchNorm after it and that BN folded
  with α into one float64 multiply-add per channel (`fold.py`);
- every other tensor (stem, classifier, BN, PReLU, ...) in fp32, and integer buffers.
The auxiliary head and the optimiser state are left out.

Loading verifies the SHA-256, checks every field and size against the file and against bounds
before anything is allocated (a crafted architecture claiming 10⁶ cells or a huge width is
refused in milliseconds), then rebuilds the network with `network_from_spec` and freezes each
binarised conv on the kernel α·sign(W) made of the stored bits and α — bitwise what the trained
layer used. `load_export(path, engine="bitpack")` runs the binary convs on the C++ kernels instead
(`graph.py`).
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bitnas.binary import BinaryConv2d, binarized_layers
from bitnas.deploy import container
from bitnas.deploy.fold import fold
from bitnas.deploy.modules import check_known, following_bn
from bitnas.errors import BitnasError, brief
from bitnas.nets import network_from_checkpoint, network_from_spec
from bitnas.nets.limits import OP_KEYS, check_build_kwargs, check_input_size
from bitnas.space.genotypes import Genotype
from bitnas.common.checkpoint import load_checkpoint

FORMAT = "bitnas-export"
VERSION = 2
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)

MAX_EDGES = 64  # edges per cell a stored genotype may have (DARTS cells have 8)
KNOWN_CLASSES = {"fashion-mnist": ("bitnas.data.formats.embedded", "FASHION_MNIST_CLASSES"),
                 "cifar10": ("bitnas.data.formats.cifar", "CIFAR10_CLASSES")}


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


def _class_names(data: dict[str, Any]) -> list[str] | None:
    if data.get("classes"):
        return [str(c) for c in data["classes"]]
    name = str(data.get("name") or "")
    for prefix, (module, attr) in KNOWN_CLASSES.items():
        if name == prefix or name.startswith(prefix + "-"):
            return list(getattr(importlib.import_module(module), attr))
    return None


def export_network(model: nn.Module, arch: dict[str, Any], image_size: int | None = None,
                   data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The export of `model` (a fixed network built from `arch`) as a dict: header fields plus the
    arrays "bits" (uint8), "alpha" (float32), "fp32" (float32) and "fold" (float64).

    `data` is the training checkpoint's data block (mean, std, name, classes), when known.
    """
    model = model.eval()
    cfg = model.cfg.to_dict()
    network = {**arch["network"], **{k: cfg[k] for k in OP_KEYS}, "auxiliary": False, "drop_path_prob": 0.0}
    follow = following_bn(model)
    check_known(model, follow)
    modules = dict(model.named_modules())
    bits, alphas, folds, binary, packed_keys = [], [], [], [], set()
    n_bytes = n_alpha = n_fold = 0
    for name, layer in binarized_layers(model):
        b = pack_signs(layer.weight).numpy()
        alpha = layer.alpha().detach().reshape(-1).float()
        bn_ref = follow.get(name)
        mul, add = fold(alpha, modules[bn_ref[0]] if bn_ref else None, bn_ref[1] if bn_ref else 0)
        binary.append({"name": name, "shape": list(layer.weight.shape), "stride": list(layer.stride),
                       "padding": list(layer.padding), "dilation": list(layer.dilation), "groups": layer.groups,
                       "pad_value": layer.pad_value, "bits": [n_bytes, b.size], "alpha": [n_alpha, alpha.numel()],
                       "bn": bn_ref[0] if bn_ref else None, "bn_offset": bn_ref[1] if bn_ref else 0,
                       "fold": [n_fold, 2 * mul.size]})
        bits.append(b)
        alphas.append(alpha.numpy())
        folds += [mul, add]
        n_bytes, n_alpha, n_fold = n_bytes + b.size, n_alpha + alpha.numel(), n_fold + 2 * mul.size
        packed_keys.update({f"{name}.weight", f"{name}.scale"})
    floats, index, ints, n_float = [], [], {}, 0
    for key, t in model.state_dict().items():
        if key in packed_keys or _is_aux(key):
            continue
        if t.is_floating_point():
            index.append([key, list(t.shape), n_float])
            floats.append(t.detach().float().cpu().reshape(-1).numpy())
            n_float += t.numel()
        else:
            ints[key] = t.detach().cpu().tolist()
    data = data or {}
    size = int(image_size) if image_size else None
    return {"format": FORMAT, "version": VERSION, "arch": {"genotype": arch["genotype"], "network": network},
            "ops": cfg,
            "input": {"in_channels": int(network.get("in_channels", 3)), "image_size": size,
                      "mean": [float(v) for v in data["mean"]] if data.get("mean") is not None else None,
                      "std": [float(v) for v in data["std"]] if data.get("std") is not None else None,
                      "dataset": data.get("name"), "classes": _class_names(data)},
            "binary": binary, "fp32_index": index, "ints": ints,
            "bits": np.concatenate(bits) if bits else np.zeros(0, np.uint8),
            "alpha": np.concatenate(alphas).astype(np.float32) if alphas else np.zeros(0, np.float32),
            "fp32": np.concatenate(floats).astype(np.float32) if floats else np.zeros(0, np.float32),
            "fold": np.concatenate(folds) if folds else np.zeros(0, np.float64)}


SECTIONS = ("bits", "alpha", "fp32", "fold")


def write_export(path: str | Path, exp: dict[str, Any]) -> int:
    """Write an export dict to `path` atomically; returns the file size."""
    header = {k: v for k, v in exp.items() if k not in SECTIONS}
    return container.write(path, header, {k: exp[k] for k in SECTIONS})


def read_export(path: str | Path) -> dict[str, Any]:
    """Read and validate an export file (checksum, fields, sizes); BitnasError otherwise."""
    header, sections = container.read(path)
    exp = {**header, **sections}
    validate_export(exp, str(path))
    return exp


def is_export_file(path: str | Path) -> bool:
    return container.is_container(path)


FORMATS = ("bitnas", "onnx", "openvino")


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str = "bitnas", form: str | None = None) -> dict[str, Any]:
    """Export the network of a bitnas training checkpoint to `out` as a `.bitnas` file, an ONNX model
    (`form` qdq or float, `onnx_export.py`) or an OpenVINO IR (`form` int8 or float,
    `openvino_export.py`); returns size figures."""
    if fmt not in FORMATS:
        raise BitnasError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    ck = load_checkpoint(checkpoint)
    model = network_from_checkpoint(ck, str(checkpoint))
    exp = export_network(model, ck["arch"], ck.get("image_size"), ck.get("data") if isinstance(ck.get("data"), dict) else None)
    if fmt == "bitnas":
        if form not in (None, "packed"):
            raise BitnasError(f"--form {form}: a .bitnas export has one form")
        write_export(out, exp)
        return export_sizes(exp, Path(out))
    from bitnas.deploy import onnx_export, openvino_export
    from bitnas.deploy.runtimes import require
    from bitnas.common.files import atomic_write_bytes

    forms = onnx_export.FORMS if fmt == "onnx" else openvino_export.FORMS
    form = form or forms[0]
    if form not in forms:
        raise BitnasError(f"--form {form}: --format {fmt} has forms {', '.join(forms)}")
    require("onnx", fmt, f"--format {fmt}")
    if fmt == "openvino":
        require("openvino", "openvino", "--format openvino")
    onnx_form = form if fmt == "onnx" else openvino_export.ONNX_FORM[form]
    proto = onnx_export.onnx_model(exp, network_from_export(exp, str(checkpoint)), onnx_form)
    data = proto.SerializeToString()
    if fmt == "onnx":
        atomic_write_bytes(out, data)
        size = len(data)
    else:
        meta = onnx_export.metadata(exp, form)
        ir = openvino_export.ir_model(data, meta)
        if form == "binary":
            openvino_export.binary_convolutions(ir)
        size = openvino_export.write_ir(out, ir)
    sizes = export_sizes(exp, Path(out))
    return {**sizes, "format": fmt, "form": form, "file_bytes": size}


def export_sizes(exp: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bytes of the packed kernels (+ α), of the fp32 tensors, of the file, and of the fp32 network."""
    n_bits = sum(math.prod(row["shape"]) for row in exp["binary"])
    packed = exp["bits"].size + 4 * exp["alpha"].size
    fp32 = 4 * exp["fp32"].size
    return {"out": str(path), "binary_layers": len(exp["binary"]), "binary_weights": n_bits,
            "packed_bytes": packed, "fp32_bytes": fp32, "file_bytes": path.stat().st_size,
            "fp32_model_bytes": 4 * n_bits + fp32}


def is_export(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


# ------------------------------------------------------------------ validation

def _fail(source: str, msg: str) -> BitnasError:
    return BitnasError(f"{source}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_slice(source: str, where: str, spec: Any, size: int, want: int) -> None:
    if (not isinstance(spec, list) or len(spec) != 2 or not all(_is_int(v) and v >= 0 for v in spec)
            or spec[1] != want):
        raise _fail(source, f"{where} is malformed (expected {want} values)")
    if spec[0] + spec[1] > size:
        raise _fail(source, f"{where} needs {spec[0] + spec[1]:,} values but the file holds {size:,} (truncated data)")


def _check_shape(source: str, where: str, shape: Any, max_numel: int) -> int:
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(s) and s >= 0 for s in shape):
        raise _fail(source, f"{where}: malformed shape {shape!r}")
    n = math.prod(shape)
    if n > max_numel:
        raise _fail(source, f"{where}: shape {shape} needs {n:,} values but the file holds {max_numel:,} (truncated data)")
    return n


def validate_export(exp: dict[str, Any], source: str = "export") -> None:
    """Refuse (BitnasError naming the field) anything an export must not claim."""
    if not is_export(exp):
        raise _fail(source, "not a bitnas export")
    if exp.get("version") != VERSION:
        raise _fail(source, f"export version {exp.get('version')!r} not supported (this bitnas reads {VERSION}; "
                            "re-export the checkpoint)")
    arch = exp.get("arch")
    if not isinstance(arch, dict) or not isinstance(arch.get("network"), dict):
        raise _fail(source, "no architecture (arch.network)")
    net = arch["network"]
    genotype = arch.get("genotype")
    if not isinstance(genotype, dict) and not (genotype is None and net.get("blocks")):
        raise _fail(source, "no architecture (arch.genotype, or arch.network.blocks for a hand-designed network)")
    for cell in ("normal", "reduce") if genotype is not None else ():
        edges = genotype.get(cell)
        if not isinstance(edges, list) or not 2 <= len(edges) <= MAX_EDGES:
            raise _fail(source, f"genotype {cell} cell must have 2..{MAX_EDGES} edges")
    parsed = Genotype.from_dict(genotype, f"{source} genotype") if genotype is not None else None
    for sec in SECTIONS:
        if not isinstance(exp.get(sec), np.ndarray):
            raise _fail(source, f"missing data section {sec!r}")
    check_build_kwargs(net, source, multiplier=len(parsed.normal_concat) if parsed is not None else 4,
                       stored=8 * exp["bits"].size + exp["fp32"].size)
    inp = exp.get("input")
    if not isinstance(inp, dict):
        raise _fail(source, "no input description")
    if inp.get("image_size") is not None:
        check_input_size(net.get("style", "cifar"), net.get("layers", 20), inp["image_size"],
                         f"{source}: input.image_size", blocks=net.get("blocks", ""))
    c_in = net.get("in_channels", 3)
    if not _is_int(inp.get("in_channels")):
        raise _fail(source, f"input.in_channels must be an integer, got {brief(inp.get('in_channels'))}")
    if inp["in_channels"] != c_in:
        raise _fail(source, f"input.in_channels is {inp['in_channels']} but the network takes {c_in}")
    for key in ("mean", "std"):
        v = inp.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != c_in
                              or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
            raise _fail(source, f"input.{key} must list {c_in} finite numbers")
    if inp.get("std") is not None and any(x <= 0 for x in inp["std"]):
        raise _fail(source, "input.std must be positive")
    classes = inp.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise _fail(source, "input.classes must be a list of names")
    if classes is not None and len(classes) != net.get("num_classes", 10):
        raise _fail(source, f"input.classes names {len(classes)} classes, the network has {net.get('num_classes', 10)}")
    for sec, dt in (("bits", np.uint8), ("alpha", np.float32), ("fp32", np.float32), ("fold", np.float64)):
        if not isinstance(exp.get(sec), np.ndarray) or exp[sec].dtype != dt:
            raise _fail(source, f"missing or mistyped data section {sec!r}")
    rows = exp.get("binary")
    if not isinstance(rows, list):
        raise _fail(source, "binary layer table missing")
    for i, row in enumerate(rows):
        where = f"binary layer {i}"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise _fail(source, f"{where} is malformed")
        where = f"binary layer {row['name']}"
        shape = row.get("shape")
        if not isinstance(shape, list) or len(shape) != 4 or not all(_is_int(s) and s >= 1 for s in shape):
            raise _fail(source, f"{where}: malformed shape {shape!r}")
        n = _check_shape(source, where, shape, 8 * exp["bits"].size)
        _check_slice(source, f"{where}: bits", row.get("bits"), exp["bits"].size, (n + 7) // 8)
        _check_slice(source, f"{where}: alpha", row.get("alpha"), exp["alpha"].size, shape[0])
        _check_slice(source, f"{where}: fold", row.get("fold"), exp["fold"].size, 2 * shape[0])
        for key in ("stride", "padding", "dilation"):
            v = row.get(key)
            if not isinstance(v, list) or len(v) != 2 or not all(_is_int(x) and 0 <= x <= 1024 for x in v):
                raise _fail(source, f"{where}: malformed {key} {v!r}")
        if not _is_int(row.get("groups")) or row["groups"] < 1 or row.get("pad_value") not in (0.0, 1.0):
            raise _fail(source, f"{where}: malformed groups or pad_value")
    index = exp.get("fp32_index")
    if not isinstance(index, list):
        raise _fail(source, "fp32 tensor index missing")
    for row in index:
        if not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str) or not _is_int(row[2]) or row[2] < 0:
            raise _fail(source, f"fp32 index row {row!r} is malformed")
        n = _check_shape(source, f"fp32 tensor {row[0]}", row[1], exp["fp32"].size)
        if row[2] + n > exp["fp32"].size:
            raise _fail(source, f"fp32 tensor {row[0]} needs {row[2] + n:,} values but the file holds "
                                f"{exp['fp32'].size:,} (truncated data)")
    ints = exp.get("ints")
    if not isinstance(ints, dict) or not all(
            isinstance(k, str) and (_is_int(v) or isinstance(v, list) and len(v) <= 64 and all(map(_is_int, v)))
            for k, v in ints.items()):
        raise _fail(source, "integer buffers are malformed")


# ------------------------------------------------------------------ loading

def _meta_check(exp: dict[str, Any], source: str) -> None:
    """Build the claimed network without memory (meta device) and compare every tensor it would
    hold with what the file stores, so nothing larger than the file is ever allocated. The
    number of cells is first checked against the cells the stored tensors name, so a file
    cannot make even the meta build large."""
    names = [row[0] for row in exp["fp32_index"]] + [row["name"] for row in exp["binary"]]
    cells = {int(n.split(".")[1]) for n in names if n.startswith("cells.") and n.split(".")[1].isdigit()}
    layers = exp["arch"]["network"].get("layers", 20)
    if cells != set(range(layers)):
        raise _fail(source, f"arch.network.layers = {layers} but the stored tensors belong to {len(cells)} cells")
    with torch.device("meta"):
        model = network_from_spec(exp["arch"], source)
    layers = dict(binarized_layers(model))
    stored = {row["name"]: row for row in exp["binary"]}
    if set(layers) != set(stored):
        raise _fail(source, "binarised layers do not match the stored architecture")
    for name, layer in layers.items():
        if list(layer.weight.shape) != stored[name]["shape"]:
            raise _fail(source, f"kernel {name} has shape {stored[name]['shape']}, the network wants "
                                f"{list(layer.weight.shape)}")
    packed = {f"{n}.{p}" for n in layers for p in ("weight", "scale")}
    want = {k: list(t.shape) for k, t in model.state_dict().items() if not _is_aux(k) and k not in packed}
    have = {row[0]: row[1] for row in exp["fp32_index"]}
    have.update({k: list(torch.tensor(v).shape) for k, v in exp["ints"].items()})
    if want != have:
        missing = sorted(set(want) - set(have))[:3]
        extra = sorted(set(have) - set(want))[:3]
        bad = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:3]
        raise _fail(source, f"tensors do not fit the stored architecture (missing {missing}, unexpected {extra}, "
                            f"wrong shape {bad})")


def network_from_export(exp: dict[str, Any], source: str = "export") -> nn.Module:
    """Rebuild the network of a (validated) export dict, in eval mode, on the float path."""
    validate_export(exp, source)
    _meta_check(exp, source)
    model = network_from_spec(exp["arch"], source)
    layers = dict(binarized_layers(model))
    state: dict[str, Tensor] = {k: torch.tensor(v) for k, v in exp["ints"].items()}
    fp32 = torch.from_numpy(np.array(exp["fp32"], dtype=np.float32))
    for key, shape, off in exp["fp32_index"]:
        state[key] = fp32[off:off + math.prod(shape)].view(shape)
    bits, alphas = torch.from_numpy(np.array(exp["bits"])), torch.from_numpy(np.array(exp["alpha"]))
    kernels: dict[str, Tensor] = {}
    for row in exp["binary"]:
        name, shape = row["name"], row["shape"]
        layer: BinaryConv2d = layers[name]
        off, nb = row["bits"]
        signs = unpack_signs(bits[off:off + nb], shape)
        a_off = row["alpha"][0]
        alpha = alphas[a_off:a_off + shape[0]].view(-1, 1, 1, 1)
        kernels[name] = alpha * signs
        state[f"{name}.weight"] = signs if layer.weight_scale in ("learned", "none") else kernels[name]
        if layer.weight_scale == "learned":
            state[f"{name}.scale"] = alpha.clone()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise _fail(source, f"tensors do not fit the stored architecture ({str(e).splitlines()[0][:200]})") from None
    for name, kernel in kernels.items():
        layers[name].freeze(kernel)
    return model.eval()


ENGINES = ("torch", "bitpack", "auto", "onnxruntime", "openvino")


def load_export(path: str | Path, engine: str = "torch", *, threads: int = 1, isa: str | None = None) -> nn.Module:
    """Load an export file for inference.

    engine="torch": the float network (frozen ±α kernels, ordinary convolutions);
    engine="bitpack": binary convs on the XNOR-popcount kernels (`bitnas.deploy.graph`), `threads`
    kernel threads, `isa` as in `bitnas.deploy.engine.resolve_isa`; "auto": bitpack when the
    extension is built, else torch. engine="onnxruntime" / "openvino" run an `.onnx` or OpenVINO
    `.xml` export (`runtimes.py`; "auto" picks the runtime by suffix for those files). All return a
    module whose forward gives (logits, None), with `meta` (the file's `input` and `arch` records)
    and `engine` (the engine it runs on): the file is read and validated once.
    """
    if engine not in ENGINES:
        raise BitnasError(f"engine '{engine}': expected one of {', '.join(ENGINES)}")
    from bitnas.deploy import runtimes

    kind = runtimes.file_kind(path)
    if engine in runtimes.RUNTIMES or (engine == "auto" and kind in ("onnx", "openvino")):
        if kind == "bitnas":
            raise BitnasError(f"{path}: a .bitnas export runs on engine torch or bitpack; for {engine} export with "
                              f"`bitnas export CHECKPOINT --format {'openvino' if engine == 'openvino' else 'onnx'}`")
        return runtimes.load(path, engine, threads)
    if kind in ("onnx", "openvino"):
        raise BitnasError(f"{path}: an {'ONNX' if kind == 'onnx' else 'OpenVINO'} file runs on engine onnxruntime or "
                          "openvino")
    exp = read_export(path)
    model = network_from_export(exp, str(path))
    from bitnas.deploy import engine as kernels

    if engine == "bitpack" or (engine == "auto" and kernels.available()):
        from bitnas.deploy.network import EngineNetwork

        model, name = EngineNetwork(model, exp, threads=threads, isa=isa), "bitpack"
    else:
        name = "torch"
    model.meta, model.engine = {"input": exp["input"], "arch": exp["arch"]}, name
    return model
