"""What deployers run on x86 instead of bitnas' engine, as contenders for benchmarks/inference.py.

Networks: the fp32 twin exported to ONNX (`torch.onnx.export(..., dynamo=False)`) and run by
- ONNX Runtime fp32, and int8: static QDQ quantisation of that ONNX file (`quantize_static`,
  per-channel int8 weights, uint8 activations, MinMax calibration on a few random batches);
- OpenVINO on the same files: fp32 and bf16 (`INFERENCE_PRECISION_HINT`; bf16 runs on AMX where
  the CPU has it) and the QDQ file as int8 (OpenVINO's own choice for the ops left in float).
Layers: OpenVINO's `BinaryConvolution` (opset1, xnor-popcount, float NHWC in and out, the
per-channel multiply-add after it fused) and an OpenVINO bf16 convolution of the same shape.

Every runtime is optional (`pip install -e '.[bench]'`): a missing one gives no contender, and
the benchmark reports null for its ratios. Each contender is a zero-argument callable on a fixed
input, so the caller can interleave it with the others in one process.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

Runner = Callable[[], object]


def versions() -> dict[str, str | None]:
    """Installed versions of the reference runtimes (None when absent)."""
    out: dict[str, str | None] = {}
    for name in ("onnx", "onnxruntime", "openvino"):
        if importlib.util.find_spec(name) is None:
            out[name] = None
            continue
        out[name] = str(getattr(__import__(name), "__version__", "?"))
    return out


def missing_note() -> str | None:
    """One line naming the absent runtimes, or None when all are installed."""
    absent = [k for k, v in versions().items() if v is None]
    if not absent:
        return None
    return f"{', '.join(absent)} not installed: their ratios are null (pip install -e '.[bench]')"


class _Logits(nn.Module):
    """The twin's logits only (its forward returns (logits, aux))."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def export_onnx(twin: nn.Module, path: Path, image: tuple[int, int, int] = (3, 32, 32)) -> Path:
    """The fp32 twin as ONNX (TorchScript exporter, dynamic batch)."""
    x = torch.randn(1, *image)
    with torch.no_grad():
        torch.onnx.export(_Logits(twin.eval()), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return path


def quantize_int8(fp32: Path, out: Path, image: tuple[int, int, int] = (3, 32, 32), batches: int = 4,
                  signed_activations: bool = False) -> Path:
    """Static QDQ int8 quantisation (per-channel int8 weights; uint8 activations, or int8 with
    `signed_activations`) calibrated on random normal batches, after ONNX Runtime's recommended
    pre-processing."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(7)
            self.data = iter([{"x": rng.standard_normal((16, *image)).astype(np.float32)} for _ in range(batches)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.data, None)

    pre = out.with_name(out.stem + "_pre.onnx")  # constants folded (BN into conv), shapes inferred
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if signed_activations else QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def _ort(path: Path, x: np.ndarray, threads: int) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})


def _ov_compile(model: object, threads: int, precision: str | None) -> object:
    import openvino as ov

    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(model, "CPU", config)


def _ov(path: Path, x: np.ndarray, threads: int, precision: str | None) -> Runner:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    model.reshape({0: list(x.shape)})
    req = _ov_compile(model, threads, precision).create_infer_request()
    return lambda: req.infer({0: x})


def ov_compiles(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether OpenVINO compiles `path` without crashing, tried in a child process (OpenVINO
    2026.4.1 segfaults compiling the QDQ int8 DARTS_V2 twin, which would end the benchmark)."""
    code = ("import sys, openvino as ov; c = ov.Core(); m = c.read_model(sys.argv[1]); "
            "m.reshape({0: [int(v) for v in sys.argv[2:]]}); c.compile_model(m, 'CPU', {'INFERENCE_NUM_THREADS': 1})")
    run = subprocess.run([sys.executable, "-c", code, str(path), *map(str, shape)], capture_output=True)
    return run.returncode == 0


SKIPPED: list[str] = []  # contenders left out, with the reason, for the benchmark's notes


def network_runners(fp32: Path | None, int8: Path | None, x: np.ndarray, threads: int) -> dict[str, Runner]:
    """Contenders on input x (NCHW float32): ort_fp32, ort_int8, ov_fp32, ov_bf16, ov_int8 — those
    installed (and, for OpenVINO int8, those it compiles without crashing: see `ov_compiles`)."""
    v = versions()
    out: dict[str, Runner] = {}
    if v["onnxruntime"] and fp32 is not None:
        out["ort_fp32"] = _ort(fp32, x, threads)
        if int8 is not None:
            out["ort_int8"] = _ort(int8, x, threads)
    if v["openvino"] and fp32 is not None:
        out["ov_fp32"] = _ov(fp32, x, threads, "f32")
        out["ov_bf16"] = _ov(fp32, x, threads, "bf16")
        if int8 is not None and ov_compiles(int8, x.shape):
            out["ov_int8"] = _ov(int8, x, threads, None)
        elif int8 is not None:
            SKIPPED.append(f"ov_int8 {int8.stem} batch {x.shape[0]}: OpenVINO crashed compiling the QDQ model")
    return out


def onnx_models(twin: nn.Module, tmp: Path, key: str) -> tuple[Path | None, Path | None]:
    """(fp32, int8) ONNX files of the twin; None where onnx / onnxruntime is absent."""
    v = versions()
    if not v["onnx"]:
        return None, None
    fp32 = export_onnx(twin, tmp / f"{key}_fp32.onnx")
    int8 = quantize_int8(fp32, tmp / f"{key}_int8.onnx") if v["onnxruntime"] else None
    return fp32, int8


def layer_runners(neg: np.ndarray, mul: np.ndarray, add: np.ndarray, w: np.ndarray, x_nhwc: np.ndarray,
                  pad: int, threads: int = 1) -> dict[str, Runner]:
    """OpenVINO contenders for one layer on float NHWC x: ov_binary (BinaryConvolution with the
    multiply-add fused, padding with +1 like `pad_value=1`) and ov_bf16 (Convolution of the float
    weights w in bf16). Empty when OpenVINO is absent."""
    if not versions()["openvino"]:
        return {}
    import openvino as ov
    import openvino.opset1 as opset1
    import openvino.opset13 as ops

    co = neg.shape[0]
    n, h, wd, ci = x_nhwc.shape
    to_nchw, to_nhwc = ops.constant(np.array([0, 3, 1, 2], np.int64)), ops.constant(np.array([0, 2, 3, 1], np.int64))
    per_channel = (lambda v: ops.constant(np.asarray(v, np.float32).reshape(1, co, 1, 1)))
    out: dict[str, Runner] = {}
    # BinaryConvolution: weight bit 1 = +1 (xnor-popcount), so the stored bits are the non-negative signs.
    x = ops.parameter([n, h, wd, ci], ov.Type.f32, name="x")
    bits = ov.op.Constant(ov.Type.u1, ov.Shape(list(neg.shape)), (~neg.astype(bool)).astype(np.uint8).ravel().tolist())
    y = opset1.binary_convolution(ops.transpose(x, to_nchw), bits, [1, 1], [pad, pad], [pad, pad], [1, 1],
                                  "xnor-popcount", 1.0)
    y = ops.transpose(ops.add(ops.multiply(y, per_channel(mul)), per_channel(add)), to_nhwc)
    req = _ov_compile(ov.Model([y], [x]), threads, "f32").create_infer_request()
    out["ov_binary"] = lambda: req.infer({0: x_nhwc})
    x2 = ops.parameter([n, h, wd, ci], ov.Type.f32, name="x")
    y2 = ops.convolution(ops.transpose(x2, to_nchw), ops.constant(np.asarray(w, np.float32)), [1, 1], [pad, pad],
                         [pad, pad], [1, 1])
    y2 = ops.transpose(ops.add(ops.multiply(y2, per_channel(mul)), per_channel(add)), to_nhwc)
    req2 = _ov_compile(ov.Model([y2], [x2]), threads, "bf16").create_infer_request()
    out["ov_bf16"] = lambda: req2.infer({0: x_nhwc})
    return out
