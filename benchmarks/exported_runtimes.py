"""The exported 1-bit Bi-Real bench network on ONNX Runtime and OpenVINO, beside the bitpack engine
and beside the same architecture's fp32 twin quantised to int8 in each runtime; one thread.

Contenders, batch 1 and 64, 3×32×32 inputs (the `bireal` network of `benchmarks/inference.py`):
- bitpack: the `.bitnas` export on our engine (`load_export(..., "bitpack")`);
- ort_qdq / ort_float: our exact ONNX export (Q/DQ int8 form; ±1 float-weight form) on ONNX Runtime;
- ov_int8: our OpenVINO IR converted from the Q/DQ form, compiled with f32 inference precision
  (what keeps the float parts exact; see `bitnas/deploy/runtimes.py`), a batch in the micro-batches
  `load_export(..., "openvino")` runs (`runtimes.micro_batch`: each tensor within ~L2, 8 images
  here); ov_int8_one_call: the same compiled model, the batch in one call;
- ov_float: the IR of the ±1 float-weight form, one call;
- ov_binary: the IR with OpenVINO's BinaryConvolution (u1 weights) for the binary convs, compiled
  for the batch size (static shapes; the row of the other batch size is a no-op);
- ort_twin_int8 / ov_twin_int8: the fp32 twin (ReLU where the child signs; `torch.onnx.export(...,
  dynamo=False)`) quantised by `onnxruntime.quantization.quantize_static` after ONNX Runtime's
  pre-processing (QDQ, per-channel int8 weights, int8 activations, calibrated on 8 random
  batches; `runtimes.quantize_int8`), on each runtime with its defaults
  (OpenVINO, through `openvino.convert_model`, may then run the unquantised parts in bf16 on AMX
  CPUs, as a deployer would get); ov_twin_int8_micro: the twin in the same micro-batches as ov_int8.

All contenders of one batch size are timed interleaved in one process (a seeded random order per
round, one warm-up); figures are wall-clock medians and "cpu" the medians of the
process's CPU time (the runtimes compute on their own worker threads; with one compute thread
this leaves out the time other jobs of a shared machine take the core).
The goal of issue 20: the exported network on its faster runtime within 1.2× of that runtime's
int8 twin, and faster than the bitpack engine.

    .venv/bin/python benchmarks/exported_runtimes.py --json
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bitnas.common.machine import cpu_model  # noqa: E402
from bitnas.deploy import engine, export_checkpoint, load_export  # noqa: E402
from bitnas.deploy.runtimes import micro_batch, openvino_config  # noqa: E402
from bitnas.nets import arch_spec  # noqa: E402
from bitnas.common.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import interleaved, medians, with_bn_statistics  # noqa: E402  (the same round-robin timing as the inference benchmark)
from runtimes import export_onnx, quantize_int8  # noqa: E402  (the twin quantised as everywhere)

NETWORK = dict(blocks="bireal", structure="bireal", init_channels=16, layers=6, style="cifar", num_classes=10,
               in_channels=3)


def cpu_name() -> str:
    """CPU model and the int8/popcount features that decide the runtimes' kernels."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu_model()
    extra = [f for f in ("avx512_vnni", "amx_int8", "avx512_vpopcntdq") if f" {f}" in flags]
    return f"{cpu_model()} ({', '.join(extra) or 'no AVX-512 VNNI/AMX'})"


def twin_int8(tmp: Path) -> Path:
    """The fp32 twin (BN statistics of two random batches) as ONNX, statically quantised to int8 QDQ
    with per-channel weights and int8 activations, the way `benchmarks/runtimes.py` quantises every twin."""
    twin = with_bn_statistics(None, "fp32", **NETWORK)
    twin.channels_last = False
    fp32 = export_onnx(twin.eval(), tmp / "twin_fp32.onnx")
    return quantize_int8(fp32, tmp / "twin_int8.onnx", batches=8, signed_activations=True)


def exports(tmp: Path) -> dict[str, Path]:
    child = with_bn_statistics(None, "binary", **NETWORK)
    ck = tmp / "bireal.pt"
    save_checkpoint(ck, {"arch": arch_spec(None, precision="binary", **NETWORK), "model": child.state_dict(),
                         "image_size": 32})
    out = {"bitnas": tmp / "bireal.bitnas", "qdq": tmp / "bireal_qdq.onnx", "float": tmp / "bireal_float.onnx",
           "ir_int8": tmp / "bireal_int8.xml", "ir_float": tmp / "bireal_float.xml",
           "ir_binary": tmp / "bireal_binary.xml"}
    export_checkpoint(ck, out["bitnas"])
    export_checkpoint(ck, out["qdq"], "onnx", "qdq")
    export_checkpoint(ck, out["float"], "onnx", "float")
    export_checkpoint(ck, out["ir_int8"], "openvino", "int8")
    export_checkpoint(ck, out["ir_float"], "openvino", "float")
    export_checkpoint(ck, out["ir_binary"], "openvino", "binary")
    return out


def runners(paths: dict[str, Path], twin: Path) -> dict[str, Callable[[np.ndarray], object]]:
    import onnxruntime as ort
    import openvino as ov

    def ort_session(path: Path) -> Callable[[np.ndarray], object]:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})

    def ov_model(path: Path, config: dict) -> Callable[[np.ndarray], object]:
        model = ov.convert_model(io.BytesIO(path.read_bytes())) if path.suffix == ".onnx" else str(path)
        req = ov.Core().compile_model(model, "CPU", config).create_infer_request()
        return lambda x: req.infer({0: x})

    def ov_static(path: Path, batch: int) -> Callable[[np.ndarray], object]:
        """BinaryConvolution runs on static shapes only: one compiled model per batch size."""
        model = ov.Core().read_model(str(path))
        model.reshape([batch, 3, 32, 32])
        req = ov.Core().compile_model(model, "CPU", openvino_config(1)).create_infer_request()
        return lambda x: req.infer({0: x}) if x.shape[0] == batch else None

    def micro_batched(run: Callable[[np.ndarray], object], n: int) -> Callable[[np.ndarray], object]:
        return lambda x: [run(x[i:i + n]) for i in range(0, len(x), n)]

    net = load_export(paths["bitnas"], "bitpack")
    n = micro_batch(ov.Core().read_model(str(paths["ir_int8"])), (64, 3, 32, 32))
    ov_default = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    twin_run, int8_run = ov_model(twin, ov_default), ov_model(paths["ir_int8"], openvino_config(1))
    return {
        "bitpack": lambda x: net(torch.from_numpy(x)),
        "ort_qdq": ort_session(paths["qdq"]), "ort_float": ort_session(paths["float"]),
        "ort_twin_int8": ort_session(twin),
        "ov_int8": micro_batched(int8_run, n), "ov_int8_one_call": int8_run,
        "ov_float": ov_model(paths["ir_float"], openvino_config(1)),
        "ov_binary_b1": ov_static(paths["ir_binary"], 1), "ov_binary_b64": ov_static(paths["ir_binary"], 64),
        "ov_twin_int8": twin_run, "ov_twin_int8_micro": micro_batched(twin_run, n),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, nargs=2, default=[31, 7], metavar=("B1", "B64"),
                   help="timed rounds at batch 1 and 64 (default 31 7)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = p.parse_args()
    torch.set_num_threads(1)
    engine.extension()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        paths, twin = exports(tmp), twin_int8(tmp)
        sizes = {k: v.stat().st_size + (v.with_suffix(".bin").stat().st_size if v.suffix == ".xml" else 0)
                 for k, v in paths.items()}
        run = runners(paths, twin)
        rows = []
        for batch, rounds in zip((1, 64), a.rounds):
            x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
            with torch.inference_mode():
                live = {k: f for k, f in run.items() if not (k.startswith("ov_binary_b") and k != f"ov_binary_b{batch}")}
            t = interleaved({k.replace(f"_b{batch}", ""): (lambda f=f: f(x)) for k, f in live.items()}, rounds)
            wall, cpu, _ = medians(t)
            wall, cpu = {k: 1e3 * v for k, v in wall.items()}, {k: 1e3 * v for k, v in cpu.items()}
            rows.append({"batch": batch, "rounds": rounds, "ms": wall, "cpu_ms": cpu})
    import onnxruntime
    import openvino

    result = {"machine": {"cpu": cpu_name(), "threads": 1, "torch": torch.__version__,
                          "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
                          "engine_isa": engine.resolve_isa()},
              "network": NETWORK, "file_bytes": sizes, "rows": rows, "seconds": round(time.perf_counter() - t_start, 1)}
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"{result['machine']['cpu']}, 1 thread; ORT {onnxruntime.__version__}, OpenVINO {openvino.__version__}; "
          "medians of interleaved runs (ms)")
    names = list(rows[0]["ms"])
    print(f"{'batch':<6}" + "".join(f"{n:>19}" for n in names))
    for key, what in (("ms", "wall"), ("cpu_ms", "process CPU time")):
        print(f"{what}:")
        for r in rows:
            print(f"{r['batch']:<6}" + "".join(f"{r[key][n]:19.2f}" for n in names))
    for r in rows:
        m = r["ms"]
        c = r["cpu_ms"]
        print(f"batch {r['batch']}: CPU time ov_int8 / ov_twin_int8 = {c['ov_int8'] / c['ov_twin_int8']:.2f}x "
              f"(one call {c['ov_int8_one_call'] / c['ov_twin_int8']:.2f}x; / twin micro-batched "
              f"{c['ov_int8'] / c['ov_twin_int8_micro']:.2f}x); wall: "
              f"ov_int8 / ov_twin_int8 = {m['ov_int8'] / m['ov_twin_int8']:.2f}x, "
              f"ort_qdq / ort_twin_int8 = {m['ort_qdq'] / m['ort_twin_int8']:.2f}x, "
              f"ort_float / ort_twin_int8 = {m['ort_float'] / m['ort_twin_int8']:.2f}x, "
              f"bitpack / best exported = {m['bitpack'] / min(m[k] for k in ('ov_int8', 'ov_float', 'ort_qdq', 'ort_float')):.2f}x")
    print(f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
