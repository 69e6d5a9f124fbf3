"""An exported 1-bit network as an OpenVINO IR (`.xml` + `.bin`), converted from its exact ONNX graph.

`openvino.convert_model` reads the Q/DQ ONNX graph (`onnx_export.py`); OpenVINO's low-precision
transformations then run each binary conv on its int8 kernels (VNNI / AMX) with a float count,
exact. Weights are saved uncompressed (`compress_to_fp16=False`: the folded BN constants and the
fp32 stem stay fp32). The bitnas metadata (input normalisation, classes, architecture, form)
goes into the IR's rt_info under `bitnas`.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from bitnas.deploy.runtimes import require
from bitnas.errors import BitnasError
from bitnas.utils import atomic_write_bytes

FORMS = ("int8", "float")  # the ONNX form converted: qdq (int8 kernels) or float ±1 weights
ONNX_FORM = {"int8": "qdq", "float": "float"}


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
