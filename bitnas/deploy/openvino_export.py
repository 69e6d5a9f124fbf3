"""An exported 1-bit network as an OpenVINO IR (`.xml` + `.bin`), converted from its exact ONNX graph.

`openvino.convert_model` reads the Q/DQ ONNX graph (`onnx_export.py`); OpenVINO's low-precision
transformations then run each binary conv on its int8 kernels (VNNI / AMX) with a float count,
exact. Weights are saved uncompressed (`compress_to_fp16=False`: the folded BN constants and the
fp32 stem stay fp32). The bitnas metadata (input normalisation, classes, architecture, form)
goes into the IR's rt_info under `bitnas`.

`form="binary"` then replaces every non-grouped binary conv by OpenVINO's `BinaryConvolution`
(xnor-popcount, weights stored as u1: 8× smaller): its input is the ±1 sign (read as bits, > 0 →
1), the border is padded with +1 and, for zero padding, the taps that fell on the border are taken
back out by a constant correction map (Σ of their weights per output pixel, exact integers), so the
count is the same integer; the per-channel multiply that `convert_model` folded into the int8
weights is applied after. Grouped (depthwise) convs, and convs whose input channels are not a
multiple of 8 (OpenVINO 2026.4's CPU plugin miscounts those: measured wrong counts at 4 and 12
channels), stay int8; the correction needs the export's fixed image size. OpenVINO's CPU plugin
runs BinaryConvolution on static shapes only, so the runtime compiles such a model per input shape.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.deploy.runtimes import require
from bitnas.errors import BitnasError
from bitnas.common.files import atomic_write_bytes

FORMS = ("int8", "binary", "float")
ONNX_FORM = {"int8": "qdq", "binary": "qdq", "float": "float"}  # the ONNX form converted


def ir_model(onnx_bytes: bytes, meta: dict[str, str]) -> Any:
    """The OpenVINO model of an ONNX model's bytes, with `meta` ({"bitnas.key": value}) as rt_info."""
    ov = require("openvino", "openvino", "--format openvino")
    try:
        model = ov.convert_model(io.BytesIO(onnx_bytes))
    except Exception as e:
        raise BitnasError(f"OpenVINO cannot convert the ONNX graph ({str(e).strip().splitlines()[0][:300]})") from None
    for key, value in meta.items():
        model.set_rt_info(value, ["bitnas", key.split(".", 1)[1]])
    return model


def write_ir(path: str | Path, model: Any) -> int:
    """Save `model` as `path` (.xml) and its .bin beside it, each atomically; returns total bytes."""
    ov = require("openvino", "openvino", "--format openvino")
    xml = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        xml_bytes, bin_bytes = (Path(tmp) / "model.xml").read_bytes(), (Path(tmp) / "model.bin").read_bytes()
    atomic_write_bytes(xml.with_suffix(".bin"), bin_bytes)
    atomic_write_bytes(xml, xml_bytes)
    return len(xml_bytes) + len(bin_bytes)


def _weights(conv: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(±1 int8 kernel, per-output-channel multiplier) of a Q/DQ binary conv, or None."""
    node, scale = conv.input_value(1).get_node(), np.float64(1.0)
    while node.get_type_name() in ("Multiply", "Convert"):
        if node.get_type_name() == "Multiply":
            const = node.input_value(1).get_node()
            if const.get_type_name() != "Constant":
                return None
            scale = scale * const.get_data().astype(np.float64)
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant" or node.get_output_element_type(0).get_type_name() != "i8":
        return None
    w = node.get_data()
    if not np.isin(w, (-1, 1)).all():
        return None
    return w, np.broadcast_to(np.asarray(scale).reshape(-1), (w.shape[0],)).astype(np.float64)


def binary_convolutions(model: Any) -> int:
    """Replace the Q/DQ int8 binary convs of a converted model by BinaryConvolution; returns how many."""
    import torch
    import torch.nn.functional as F

    require("openvino", "openvino", "--form binary")
    import openvino as ov
    import openvino.opset1 as ops

    done = 0
    for conv in list(model.get_ordered_ops()):
        if conv.get_type_name() != "Convolution" or conv.input_value(0).get_node().get_type_name() != "FakeQuantize":
            continue
        found = _weights(conv)
        if found is None:
            continue
        w, scale = found
        if w.shape[1] % 8:  # OpenVINO 2026.4's CPU BinaryConvolution miscounts other widths (measured)
            continue
        x = conv.input_value(0).get_node().input_value(0)
        pb, pe = list(conv.get_pads_begin()), list(conv.get_pads_end())
        pad = x.get_node()
        if pad.get_type_name() == "Pad" and pad.get_input_size() == 4 and all(
                pad.input_value(i).get_node().get_type_name() == "Constant" for i in (1, 2, 3)) and \
                float(pad.input_value(3).get_node().get_data()) == 0.0:
            # a zero pad (a ternary border) becomes the conv's own padding, corrected below
            pb = [a + int(b) for a, b in zip(pb, pad.input_value(1).get_node().get_data()[2:])]
            pe = [a + int(b) for a, b in zip(pe, pad.input_value(2).get_node().get_data()[2:])]
            x = pad.input_value(0)
        shape = x.get_partial_shape()
        strides, dil = list(conv.get_strides()), list(conv.get_dilations())
        if any(pb + pe) and not (shape[2].is_static and shape[3].is_static):
            raise BitnasError("--form binary needs a fixed image size (the export holds none)")
        bits = ov.Tensor(ov.Type.u1, ov.Shape(list(w.shape)))
        bits.data[:] = np.packbits((w > 0).reshape(-1), bitorder="little")
        out = ops.binary_convolution(x, ov.op.Constant(bits), strides, pb, pe, dil, "xnor-popcount", 1.0)
        if any(pb + pe):  # zero padding: take the +1 border taps back out
            h, wd = shape[2].get_length(), shape[3].get_length()
            border = F.pad(torch.zeros(1, w.shape[1], h, wd, dtype=torch.float64), (pb[1], pe[1], pb[0], pe[0]), value=1.0)
            corr = F.conv2d(border, torch.from_numpy(w.astype(np.float64)), stride=strides, dilation=dil)
            out = ops.subtract(out, ops.constant(corr.numpy().astype(np.float32)))
        out = ops.multiply(out, ops.constant(scale.astype(np.float32).reshape(1, -1, 1, 1)))
        conv.output(0).replace(out.output(0))
        done += 1
    return done
