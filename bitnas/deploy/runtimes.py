"""Run exported ONNX (`.onnx`) and OpenVINO IR (`.xml` + `.bin`) files on ONNX Runtime or OpenVINO.

The runtimes are optional extras (`pip install 'bitnas[onnx]'`, `'bitnas[openvino]'`); a missing
one is named in one line. A file is read as data and checked before a runtime sees it: a size
bound, the protobuf / XML parsed, one input and one output, standard-domain operators only (no
custom-op libraries are ever loaded), no external-data references (which would make a runtime
open other paths), and the bitnas metadata (JSON) validated. Anything else is refused in one
`BitnasError` line. `load(path, engine)` returns a module whose forward gives (logits, None),
like the float path and the bitpack engine.

OpenVINO compiles with f32 inference precision: on CPUs with AMX/AVX-512 BF16 its default would
run the float parts (the folded BN, the sign's input) in bf16, which changes signs and logits;
the Q/DQ'd binary convs still run on its int8 kernels.
"""
from __future__ import annotations

import importlib
import io
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from bitnas.deploy import container
from bitnas.errors import BitnasError

RUNTIMES = {"onnxruntime": "onnx", "openvino": "openvino"}  # engine -> extra that installs it
META = "bitnas."


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module` or raise one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BitnasError(f"{what} needs the Python package '{module}', which is not installed: "
                          f"pip install 'bitnas[{extra}]'") from None


def file_kind(path: str | Path) -> str | None:
    """'bitnas', 'onnx' or 'openvino' by content magic or suffix; None otherwise."""
    p = Path(path)
    if container.is_container(p):
        return "bitnas"
    return {".onnx": "onnx", ".xml": "openvino"}.get(p.suffix.lower())


class RuntimeNetwork(nn.Module):
    """An exported file on an external runtime; forward(x) → (logits, None), x normalised NCHW."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], meta: dict[str, Any], engine: str, path: str) -> None:
        super().__init__()
        self._run, self.meta, self.engine, self.path = run, meta, engine, path

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.array(self._run(arr), dtype=np.float32, copy=True)), None

    def extra_repr(self) -> str:
        return f"engine={self.engine}, path={self.path}, form={self.meta.get('form')}"


# ------------------------------------------------------------------ reading and checking files

def _read_bytes(p: Path) -> bytes:
    try:
        if not p.is_file():
            raise BitnasError(f"{p}: not found (or not a regular file)")
        size = p.stat().st_size
        if size > container.MAX_FILE_BYTES:
            raise BitnasError(f"{p}: {size:,} bytes is larger than the {container.MAX_FILE_BYTES:,}-byte limit "
                              "(raise $BITNAS_MAX_EXPORT_BYTES if it is genuine)")
        return p.read_bytes()
    except OSError as e:
        raise BitnasError(f"{p}: cannot read ({e.strerror or e})") from None


def _first_line(e: BaseException) -> str:
    text = [t.strip() for t in str(e).splitlines() if t.strip() and not t.startswith("Exception from ")]
    return (text[0] if text else type(e).__name__)[:300]


def parse_meta(props: dict[str, str], source: str) -> dict[str, Any]:
    """The bitnas metadata of a model (input description, architecture, form), validated."""
    meta: dict[str, Any] = {"input": None, "arch": None, "form": props.get(f"{META}form")}
    for key in ("input", "arch"):
        raw = props.get(f"{META}{key}")
        if raw is None:
            continue
        try:
            meta[key] = json.loads(raw)
        except ValueError:
            raise BitnasError(f"{source}: metadata {META}{key} is not JSON") from None
        if not isinstance(meta[key], dict):
            raise BitnasError(f"{source}: metadata {META}{key} must be a JSON object")
    net = (meta["arch"] or {}).get("network")
    if meta["arch"] is not None and not isinstance(net, dict):
        raise BitnasError(f"{source}: metadata {META}arch has no network description")
    for key in ("num_classes", "in_channels"):
        v = (net or {}).get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1_000_000):
            raise BitnasError(f"{source}: metadata arch.network.{key} must be a positive integer")
    inp = meta["input"]
    if inp is not None:
        c = inp.get("in_channels")
        if not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= 4096:
            raise BitnasError(f"{source}: metadata input.in_channels must be an integer in 1..4096")
        for key in ("mean", "std"):
            v = inp.get(key)
            if v is not None and (not isinstance(v, list) or len(v) != c or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
                raise BitnasError(f"{source}: metadata input.{key} must list {c} finite numbers")
        if inp.get("std") is not None and any(x <= 0 for x in inp["std"]):
            raise BitnasError(f"{source}: metadata input.std must be positive")
        size = inp.get("image_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 8192):
            raise BitnasError(f"{source}: metadata input.image_size must be an integer in 1..8192")
        classes = inp.get("classes")
        if classes is not None and (not isinstance(classes, list) or not all(isinstance(n, str) for n in classes)):
            raise BitnasError(f"{source}: metadata input.classes must be a list of names")
    return meta


def read_onnx(path: str | Path) -> tuple[bytes, dict[str, Any]]:
    """The bytes of a checked ONNX model file and its bitnas metadata."""
    p = Path(path)
    onnx = require("onnx", "onnx", "reading an ONNX model")
    data = _read_bytes(p)
    try:
        model = onnx.load_model_from_string(data)
    except Exception:
        raise BitnasError(f"{p}: not an ONNX model (unreadable protobuf)") from None
    g = model.graph
    if not g.node or len(g.input) < 1 or len(g.output) != 1:
        raise BitnasError(f"{p}: not an ONNX model of a network (needs nodes, one input and one output)")
    domains = {o.domain for o in model.opset_import} | {n.domain for n in g.node}
    if domains - {"", "ai.onnx"}:
        raise BitnasError(f"{p}: uses operators of domain(s) {sorted(domains - {'', 'ai.onnx'})}; only standard "
                          "ONNX operators are run")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer):
        raise BitnasError(f"{p}: refers to external tensor data; only self-contained models are read")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise BitnasError(f"{p}: invalid ONNX model ({_first_line(e)})") from None
    inits = {t.name for t in g.initializer}
    if len([i for i in g.input if i.name not in inits]) != 1:
        raise BitnasError(f"{p}: the model must take exactly one input tensor")
    return data, parse_meta({q.key: q.value for q in model.metadata_props}, str(p))


def _ov_meta(model: Any, source: str) -> dict[str, Any]:
    props = {}
    for key in ("input", "arch", "form"):
        if model.has_rt_info(["bitnas", key]):
            props[f"{META}{key}"] = model.get_rt_info(["bitnas", key]).astype(str)
    return parse_meta(props, source)


def read_openvino(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """An OpenVINO model read from an IR `.xml` (+ `.bin` beside it) or an `.onnx` file, with its metadata."""
    p = Path(path)
    ov = require("openvino", "openvino", "running on OpenVINO")
    if p.suffix.lower() == ".onnx":
        data, meta = read_onnx(p)
        try:
            return ov.convert_model(io.BytesIO(data)), meta
        except Exception as e:
            raise BitnasError(f"{p}: OpenVINO cannot read this ONNX model ({_first_line(e)})") from None
    xml = _read_bytes(p)
    weights = p.with_suffix(".bin")
    if not weights.is_file():
        raise BitnasError(f"{p}: its weights file {weights.name} is missing (an IR is an .xml and a .bin)")
    if b"<net" not in xml[:4096]:
        raise BitnasError(f"{p}: not an OpenVINO IR (no <net> element)")
    try:
        model = ov.Core().read_model(xml, ov.Tensor(np.frombuffer(_read_bytes(weights), np.uint8).copy()))
    except Exception as e:
        raise BitnasError(f"{p}: unreadable OpenVINO IR ({_first_line(e)})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise BitnasError(f"{p}: the model must have one input and one output")
    return model, _ov_meta(model, str(p))


# ------------------------------------------------------------------ sessions

def onnxruntime_network(path: str | Path, threads: int = 1) -> RuntimeNetwork:
    ort = require("onnxruntime", "onnx", "--engine onnxruntime")
    p = Path(path)
    if p.suffix.lower() == ".xml":
        raise BitnasError(f"{p}: an OpenVINO IR runs on --engine openvino; ONNX Runtime runs .onnx files")
    data, meta = read_onnx(p)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise BitnasError(f"{p}: ONNX Runtime cannot load this model ({_first_line(e)})") from None
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return RuntimeNetwork(run, meta, "onnxruntime", str(p))


def openvino_config(threads: int = 1) -> dict[str, Any]:
    """Compile settings: f32 inference precision (exact float parts), `threads` threads, one stream."""
    return {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY"}


# Images per OpenVINO inference call: as many as keep the largest per-image activation tensor
# within about one core's L2 cache (2 MiB on Sapphire Rapids). The exact form keeps float conv
# outputs (4 bytes) on the real-valued residual stream, plus a separate sign pass that reads them
# back; a batch whose tensors spill to memory takes that traffic at DRAM speed. Measured on the
# bench's Bi-Real network at batch 64 (Xeon Sapphire Rapids, 1 thread, CPU-time medians): one
# call 1.58-1.79x the int8 twin's time, micro-batches of 8 images 1.16-1.17x; results identical.
MICRO_BATCH_BYTES = 2 << 20


def micro_batch(model: Any, shape: tuple[int, ...]) -> int:
    """Images per inference call for inputs of `shape` (N, C, H, W): MICRO_BATCH_BYTES over the
    bytes of the model's largest per-image tensor (of the ops the input reaches: not the weights'
    dequantisation), at least 1."""
    one = model.clone()
    one.reshape([1, *shape[1:]])
    largest, seen, todo = 0, set(), [p.output(0) for p in one.get_parameters()]
    while todo:
        out = todo.pop()
        if out.get_partial_shape().is_static:
            largest = max(largest, math.prod(out.get_shape()) * out.get_element_type().size)
        for target in out.get_target_inputs():
            node = target.get_node()
            if node.get_friendly_name() not in seen:
                seen.add(node.get_friendly_name())
                todo.extend(node.outputs())
    return max(1, MICRO_BATCH_BYTES // max(largest, 1))


def openvino_network(path: str | Path, threads: int = 1) -> RuntimeNetwork:
    """An IR or ONNX file compiled by OpenVINO. Its CPU plugin runs `BinaryConvolution` on static
    shapes only, so a model holding one is compiled once per input shape (cached). A batch runs in
    micro-batches of `micro_batch` images (each image's logits are the same either way)."""
    ov = require("openvino", "openvino", "--engine openvino")
    model, meta = read_openvino(path)
    core = ov.Core()
    per_shape = any(op.get_type_name() == "BinaryConvolution" for op in model.get_ops())
    requests: dict[tuple[int, ...], Any] = {}

    def request(shape: tuple[int, ...]) -> tuple[Any, Any]:
        key = shape if per_shape else ()
        if key not in requests:
            m = model
            if per_shape:
                m = model.clone()
                m.reshape(list(shape))
            try:
                compiled = core.compile_model(m, "CPU", openvino_config(threads))
            except Exception as e:
                raise BitnasError(f"{path}: OpenVINO cannot compile this model ({_first_line(e)})") from None
            requests[key] = (compiled.create_infer_request(), compiled.output(0))
        return requests[key]

    if not per_shape:
        request(())

    chunks: dict[tuple[int, ...], int] = {}

    def infer(x: np.ndarray) -> np.ndarray:
        req, out = request(tuple(x.shape))
        return req.infer({0: x})[out]

    def run(x: np.ndarray) -> np.ndarray:
        image = tuple(x.shape[1:])
        if image not in chunks:
            chunks[image] = micro_batch(model, tuple(x.shape))
        n = chunks[image]
        if len(x) <= n:
            return infer(x)
        return np.concatenate([infer(x[i:i + n]) for i in range(0, len(x), n)])

    return RuntimeNetwork(run, meta, "openvino", str(path))


def load(path: str | Path, engine: str = "auto", threads: int = 1) -> RuntimeNetwork:
    """An `.onnx` or OpenVINO `.xml` file on `engine` (auto: ONNX Runtime for .onnx, OpenVINO for .xml)."""
    if threads < 1:
        raise BitnasError(f"threads must be >= 1, got {threads}")
    if engine == "auto":
        engine = "openvino" if Path(path).suffix.lower() == ".xml" else "onnxruntime"
    if engine == "onnxruntime":
        return onnxruntime_network(path, threads)
    if engine == "openvino":
        return openvino_network(path, threads)
    raise BitnasError(f"engine '{engine}': ONNX and OpenVINO files run on onnxruntime or openvino")
