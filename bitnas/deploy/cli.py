"""`bitnas export` (bit-pack a trained network) and `bitnas infer` (classify image files with it)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bitnas.config import positive_int
from bitnas.errors import BitnasError

PSEUDO_FS = ("/proc", "/sys", "/dev")
# An export without an input size (not made from a `bitnas train` checkpoint) runs each image at its
# own size: bounded, as a network's activations grow with the input's area.
MAX_UNSIZED_SIDE = 256
# Pixels decoded per forward pass (64 images of 224×224): large inputs run in smaller batches.
MAX_BATCH_PIXELS = 64 * 224 * 224


def _replaceable(out: Path, fmt: str) -> bool:
    """True when the existing `out` is an earlier export of format `fmt` (so it may be replaced)."""
    from bitnas.deploy.export import is_export_file

    if fmt == "bitnas":
        return is_export_file(out)
    try:
        if fmt == "onnx":
            from bitnas.deploy.runtimes import read_onnx

            return read_onnx(out)[1].get("form") is not None
        with open(out, "rb") as f:
            text = f.read(64 << 20)
        return b"<net" in text[:4096] and b"<bitnas>" in text
    except (BitnasError, OSError):
        return False


def check_export_target(out: Path, checkpoint: Path, fmt: str = "bitnas") -> None:
    """Refuse an --out that would destroy something or cannot be written, before any work."""
    real = Path(os.path.realpath(out))
    for fs in PSEUDO_FS:
        if str(real) == fs or str(real).startswith(fs + "/"):
            raise BitnasError(f"--out {out}: under {fs}, a system pseudo-filesystem, not a place for files")
    if checkpoint.exists() and real == Path(os.path.realpath(checkpoint)):
        raise BitnasError(f"--out {out}: is the checkpoint being exported; writing there would destroy it")
    if out.is_dir():
        raise BitnasError(f"--out {out}: is a directory; give a file name such as {out / 'model.bitnas'}")
    if fmt == "openvino" and out.suffix.lower() != ".xml":
        raise BitnasError(f"--out {out}: an OpenVINO IR is an .xml file (its .bin is written beside it)")
    targets = [out, out.with_suffix(".bin")] if fmt == "openvino" else [out]
    for target in targets:
        if target.exists() or target.is_symlink():
            if not target.is_file():
                raise BitnasError(f"--out {out}: {target} exists and is not a regular file")
            if not _replaceable(out, fmt):
                what = {"bitnas": "a bitnas export", "onnx": "a bitnas ONNX export", "openvino": "a bitnas OpenVINO IR"}
                raise BitnasError(f"--out {out}: {target} exists and is not {what[fmt]}; refusing to overwrite it")
    parent = real.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BitnasError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BitnasError(f"--out {out}: directory {parent} is not writable")


def cmd_export(args: argparse.Namespace) -> int:
    from bitnas.deploy.export import export_checkpoint

    ck = Path(args.checkpoint)
    if not ck.is_file():
        raise BitnasError(f"{args.checkpoint}: checkpoint not found")
    out = Path(args.out) if args.out else ck.with_suffix({"bitnas": ".bitnas", "onnx": ".onnx", "openvino": ".xml"}[args.format])
    if args.format != "bitnas":
        from bitnas.deploy.runtimes import require

        require("onnx", "onnx" if args.format == "onnx" else "openvino", f"--format {args.format}")
        if args.format == "openvino":
            require("openvino", "openvino", "--format openvino")
    check_export_target(out, ck, args.format)
    r = export_checkpoint(ck, out, args.format, args.form)
    if args.json:
        print(json.dumps(r))
    elif args.format != "bitnas":
        print(f"wrote {r['out']}: {args.format} ({r['form']}), {r['binary_layers']} binary convs exact, "
              f"{r['file_bytes']:,} bytes")
    else:
        ratio = r["fp32_model_bytes"] / max(r["packed_bytes"] + r["fp32_bytes"], 1)
        print(f"wrote {r['out']}: {r['binary_layers']} binarised convs, {r['binary_weights']:,} 1-bit weights in "
              f"{r['packed_bytes']:,} bytes (bits + α), {r['fp32_bytes']:,} bytes of fp32 tensors; "
              f"{ratio:.1f}x smaller than the same network in fp32 (file {r['file_bytes']:,} bytes)")
    return 0


def _image_list(target: Path) -> list[Path]:
    from bitnas.data.formats.imagefolder import IMAGE_EXTENSIONS

    if target.is_file():
        return [target]
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise BitnasError(f"{target}: no images ({'/'.join(IMAGE_EXTENSIONS)}) in this folder")
        return files
    if target.exists():
        raise BitnasError(f"{target}: not a regular file or folder")
    raise BitnasError(f"{target}: no such image file or folder")


def classify(model_path: str, images: list[Path], *, engine: str = "auto", threads: int = 1, topk: int = 5,
             batch_size: int = 64) -> dict[str, Any]:
    """Top-k classes of each image (decoded, resized and normalised as in training)."""
    import torch

    from bitnas.data.formats.imagefolder import _decode
    from bitnas.deploy.engine import deployment_note, resolve_isa as engine_isa
    from bitnas.deploy.export import load_export
    from bitnas.deploy.runtimes import RUNTIMES, file_kind

    kind = file_kind(model_path)
    runtime_file = kind in ("onnx", "openvino")  # runs on its runtime whatever --engine names, unless a runtime
    model = load_export(model_path, "auto" if runtime_file and engine not in RUNTIMES else engine, threads=threads)
    inp, used = model.meta.get("input") or {}, model.engine
    net = (model.meta.get("arch") or {}).get("network")
    exp = {"input": inp, "arch": {"network": net if isinstance(net, dict) else {}}}
    if not inp:
        raise BitnasError(f"{model_path}: holds no bitnas metadata (input normalisation); export it with "
                          "`bitnas export CHECKPOINT --format onnx|openvino`")
    if inp.get("mean") is None or inp.get("std") is None:
        raise BitnasError(f"{model_path}: holds no input normalisation (exported from a checkpoint without data "
                          "statistics); export a `bitnas train` checkpoint")
    mode = "L" if inp["in_channels"] == 1 else "RGB"
    if inp["in_channels"] not in (1, 3):
        raise BitnasError(f"{model_path}: takes {inp['in_channels']} channels; image files give 1 or 3")
    if inp.get("image_size"):
        hw = (inp["image_size"], inp["image_size"])
    else:
        from bitnas.data.images import read_header
        from bitnas.nets.limits import check_input_size

        w, h = read_header(images[0])[1]
        if max(w, h) > MAX_UNSIZED_SIDE:
            raise BitnasError(f"{model_path}: holds no input image size, so images run at their own size, at most "
                              f"{MAX_UNSIZED_SIDE}×{MAX_UNSIZED_SIDE}; {images[0]} is {w}×{h} (downscale it, or "
                              "export a `bitnas train` checkpoint)")
        hw = (h, w)
        net = exp["arch"]["network"]
        check_input_size(net.get("style", "cifar"), net.get("layers", 20), min(hw), str(images[0]),
                         blocks=net.get("blocks", ""))
    mean = torch.tensor(inp["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(inp["std"], dtype=torch.float32).view(1, -1, 1, 1)
    names = inp.get("classes")
    k = max(1, min(topk, int(exp["arch"]["network"].get("num_classes", 10))))
    preds = []
    batch_size = max(1, min(batch_size, MAX_BATCH_PIXELS // (hw[0] * hw[1])))
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        raw = torch.from_numpy(_decode([(p, 0) for p in chunk], mode, hw)).float()
        x = (raw / 255.0 - mean) / std
        with torch.inference_mode():
            probs = torch.softmax(model(x)[0].float(), dim=1)
        top = torch.topk(probs, k, dim=1)
        for path, vals, idx in zip(chunk, top.values.tolist(), top.indices.tolist()):
            preds.append({"file": str(path), "top": [
                {"class": c, "name": names[c] if names and c < len(names) else str(c), "prob": round(float(v), 6)}
                for v, c in zip(vals, idx)]})
    isa = engine_isa() if used == "bitpack" else None
    note = deployment_note() if used == "bitpack" else None
    return {"model": model_path, "engine": used, "isa": isa, "note": note, "image_size": list(hw),
            "num_images": len(images), "predictions": preds}


def cmd_infer(args: argparse.Namespace) -> int:
    from bitnas.deploy.runtimes import file_kind

    if not Path(args.model).is_file():
        raise BitnasError(f"{args.model}: export not found")
    if file_kind(args.model) is None:
        raise BitnasError(f"{args.model}: not a bitnas export (make one with `bitnas export CHECKPOINT`), nor an "
                          ".onnx / OpenVINO .xml file")
    r = classify(args.model, _image_list(Path(args.images)), engine=args.engine, threads=args.threads,
                 topk=args.topk, batch_size=args.batch_size)
    if r["note"]:
        print(f"bitnas: {r['note']}", file=sys.stderr)
    if args.json:
        print(json.dumps(r))
        return 0
    for p in r["predictions"]:
        best = " | ".join(f"{t['name']} {100 * t['prob']:.1f}%" for t in p["top"])
        print(f"{p['file']}: {best}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="bit-pack a trained network (1-bit kernels 8 per byte) for inference",
                       description="Write the network of a training checkpoint as a .bitnas file: binarised kernels "
                                   "packed 8 signs per byte plus per-channel α and the BN after each folded with α, "
                                   "the input normalisation, everything else fp32, sealed with a SHA-256; no "
                                   "auxiliary head or optimiser state. `bitnas infer`, `bitnas eval FILE [--engine "
                                   "bitpack]` and bitnas.deploy.load_export read it.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a bitnas training checkpoint (last.pt, best.pt)")
    p.add_argument("--out", default=None, help="output file (default: CHECKPOINT with suffix .bitnas); an existing "
                                               "file is only replaced if it is an export")
    p.add_argument("--json", action="store_true", help="print the sizes as one JSON object")
    p.add_argument("--format", default="bitnas", choices=("bitnas", "onnx", "openvino"),
                   help="bitnas (default): the packed .bitnas file; onnx: a standard ONNX model whose binary convs "
                        "are exact (needs bitnas[onnx]); openvino: an OpenVINO IR .xml + .bin (needs bitnas[openvino])")
    p.add_argument("--form", default=None,
                   help="onnx: qdq (default; ±1 int8 Q/DQ inputs and weights, float count) or float (±1 float "
                        "weights); openvino: int8 (default, from the qdq graph), binary (OpenVINO BinaryConvolution, u1 "
                        "weights) or float")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("infer", help="classify image files with an exported network (1-bit kernels)",
                       description="Decode IMAGE (or every image under DIR), resize and normalise it as in training, "
                                   "run the exported network and print the top-k classes. With the C++ extension "
                                   "built, binary convolutions run on the XNOR-popcount kernels (AVX2 where the CPU "
                                   "has it; $BITNAS_ENGINE_ISA=scalar forces the portable ones).")
    p.add_argument("model", metavar="FILE", help="a .bitnas export, or an .onnx / OpenVINO .xml export")
    p.add_argument("images", metavar="IMAGE|DIR", help="an image file, or a folder searched recursively")
    p.add_argument("--topk", type=positive_int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--engine", default="auto", choices=("auto", "bitpack", "torch", "onnxruntime", "openvino"),
                   help="auto: bitpack when the extension is built, else torch (.bitnas); onnxruntime for .onnx, "
                        "openvino for .xml")
    p.add_argument("--threads", type=positive_int, default=1, help="kernel threads of the bitpack engine")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.set_defaults(func=cmd_infer)
