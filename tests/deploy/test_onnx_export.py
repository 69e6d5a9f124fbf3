"""ONNX and OpenVINO exports: exact against a float64 evaluation of the same network, the graph's
int8 ±1 kernels equal to sign(W) of the trained layers, the command line, and every malformed
file or missing runtime refused in one line.

The exactness checks follow `test_engine_network.py`: logits within 1e-4 relative of a float64
evaluation on the images where no sign is taken of a value within float32 rounding of zero
(those are counted and must be rare), the float path within the same tolerance, and the top-1
of each runtime equal to the float path's on those images (and to the float64 evaluation's, but
for top-two ties within the tolerance).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from bitnas.binary import binarized_layers
from bitnas.cli import main
from bitnas.deploy import export_network, load_export, network_from_export
from bitnas.deploy.onnx_export import onnx_model
from bitnas.deploy.runtimes import RuntimeNetwork
from bitnas.space.structures import STRUCTURES
from test_deploy_cli import _checkpoint, files, refused
from test_engine_network import calibrated, data, float64_reference, hand_designed, relative_error  # noqa: F401 (fixture)

HAVE = {m: importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "openvino")}
needs_onnx = pytest.mark.skipif(not HAVE["onnx"], reason="onnx not installed (pip install 'bitnas[onnx]')")
RUNTIMES = [pytest.param("onnxruntime", marks=pytest.mark.skipif(
                not (HAVE["onnx"] and HAVE["onnxruntime"]), reason="onnxruntime not installed (pip install 'bitnas[onnx]')")),
            pytest.param("openvino", marks=pytest.mark.skipif(
                not (HAVE["onnx"] and HAVE["openvino"]), reason="openvino not installed (pip install 'bitnas[openvino]')"))]
N_IMAGES = 100


def runtime_network(exp: dict, engine: str, tmp: Path, form: str = "qdq") -> RuntimeNetwork:
    path = tmp / f"m-{engine}-{form}.onnx"
    path.write_bytes(onnx_model(exp, network_from_export(exp), form).SerializeToString())
    return load_export(path, engine)


@dataclass(frozen=True)
class Reference:
    """An export with its float64 logits, ambiguous-image mask and float-path logits on `x`: what
    every runtime's cell compares against (read only)."""
    exp: dict
    x: torch.Tensor
    want: torch.Tensor
    ambiguous: torch.Tensor
    floats: torch.Tensor


@pytest.fixture(scope="module")
def references(data) -> Callable[..., Reference]:
    """`references(key, build, n)`: the Reference of the network `build()` returns on the first `n`
    test images, built once per key in this module. Calibrating a network and its float64 evaluation
    cost more than a runtime's run, and the two runtimes' cells of one setting check the same ones."""
    memo: dict[tuple, Reference] = {}

    def get(key: tuple, build: Callable[[], tuple[torch.nn.Module, dict]], n: int) -> Reference:
        if key not in memo:
            exp = export_network(*build())
            floats, x = network_from_export(exp), data["x"][:n]
            want, ambiguous = float64_reference(floats, x)
            with torch.no_grad():
                f = floats(x)[0]
            memo[key] = Reference(exp, x, want, ambiguous, f)
        return memo[key]

    return get


def check_exact(ref: Reference, engine: str, tmp: Path, form: str = "qdq") -> int:
    """Assert the runtime's logits and top-1 against float64 and the float path; returns the
    number of images checked."""
    want, ambiguous, f = ref.want, ref.ambiguous, ref.floats
    got = runtime_network(ref.exp, engine, tmp, form)(ref.x)[0]
    assert ambiguous.float().mean() < 0.25, "most images must be checked"
    err = relative_error(got, want)
    assert err[~ambiguous].max() < 1e-4, f"{engine}: {err[~ambiguous].max():.2e}"
    # The float path accumulates ±1 products as integers (BinaryConv2d in eval), so it is within
    # the tolerance of float64 too, and the runtime's top-1 is the float path's on every checked
    # image.
    assert relative_error(f, want)[~ambiguous].max() < 1e-4
    assert torch.equal(got.argmax(1)[~ambiguous], f.argmax(1)[~ambiguous])
    # And float64's, except where its top two lie within the 1e-4 tolerance (a tie two float32
    # implementations may break either way; counted, rare).
    top2 = want.topk(2, 1).values
    clear = ~ambiguous & ((top2[:, 0] - top2[:, 1]) / want.abs().amax(1) >= 1e-4)
    assert clear.float().mean() > 0.7
    assert torch.equal(got.argmax(1)[clear], want.argmax(1)[clear])
    return int((~ambiguous).sum())


@pytest.mark.parametrize("engine", RUNTIMES)
@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("structure", STRUCTURES.names())
def test_every_structure_is_exact_on_the_runtimes(structure: str, pad_value: float, engine: str, data, references,
                                                  tmp_path) -> None:
    ref = references(("probe", structure, pad_value),
                     lambda: calibrated(structure, pad_value, data, c=4, probe=True), N_IMAGES)
    assert check_exact(ref, engine, tmp_path) > 0.75 * N_IMAGES


def _hand_designed(blocks: str, pad_value: float, data, references) -> Reference:
    return references(("hand", blocks, pad_value), lambda: hand_designed(blocks, pad_value, data), N_IMAGES)


@pytest.mark.parametrize("engine", RUNTIMES)
@pytest.mark.parametrize("blocks,pad_value", [("bireal", 0.0), ("bireal", 1.0), ("reactnet", 0.0)])
def test_hand_designed_networks_are_exact_on_the_runtimes(blocks: str, pad_value: float, engine: str, data,
                                                          references, tmp_path) -> None:
    """Widths 16..64 at 3×3: counts up to ±576, beyond what an int8 requantisation could hold."""
    ref = _hand_designed(blocks, pad_value, data, references)
    assert max(r["shape"][1] * r["shape"][2] * r["shape"][3] for r in ref.exp["binary"]) > 127
    check_exact(ref, engine, tmp_path)


@pytest.mark.parametrize("engine", RUNTIMES)
def test_float_form_is_exact_too(engine: str, data, references, tmp_path) -> None:
    ref = references(("plain", "reactnet", 1.0), lambda: calibrated("reactnet", 1.0, data, c=4), 100)
    check_exact(ref, engine, tmp_path, form="float")


@pytest.mark.skipif(not (HAVE["onnx"] and HAVE["openvino"]), reason="openvino not installed (pip install 'bitnas[openvino]')")
def test_openvino_runs_a_batch_in_micro_batches_with_the_same_logits(data, tmp_path, monkeypatch) -> None:
    """micro_batch: the budget over the largest per-image tensor (here the stem's C·H·W floats);
    a batch run in micro-batches gives each image's logits as a call of its own does."""
    from bitnas.deploy import runtimes

    net, spec = calibrated("bireal", 0.0, data, c=4, batches=1)
    exp = export_network(net, spec)
    exp["input"]["image_size"] = 28
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_model(exp, network_from_export(exp)).SerializeToString())
    model, _ = runtimes.read_openvino(path)
    floats, sizes = network_from_export(exp), []
    for m in floats.modules():  # the float path's tensors, as float32 bytes per image
        m.register_forward_hook(lambda mod, args, out: sizes.append(4 * (out[0] if isinstance(out, tuple)
                                                                             else out)[0].numel()))
    with torch.no_grad():
        floats(data["x"][:1])
    widest = max(sizes)
    monkeypatch.setattr(runtimes, "MICRO_BATCH_BYTES", 3 * widest + 7)
    assert runtimes.micro_batch(model, (50, 1, 28, 28)) == 3
    x = data["x"][:10]
    ov_net = load_export(path, "openvino")
    whole = ov_net(x)[0]
    singles = torch.cat([ov_net(x[i:i + 1])[0] for i in range(len(x))])
    assert torch.equal(whole, singles)


@needs_onnx
def test_graph_holds_the_trained_signs_as_int8_and_the_metadata(data) -> None:
    import onnx
    from onnx import numpy_helper

    net, spec = calibrated("cpnas", 1.0, data, c=4, batches=1)
    exp = export_network(net, spec)
    exp["input"].update(mean=[0.25], std=[0.5], classes=[f"c{i}" for i in range(10)], image_size=28)
    model = onnx_model(exp, network_from_export(exp))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name.rsplit("_", 1)[0]: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = dict(binarized_layers(net))
    for name, layer in layers.items():
        w = inits[f"{name}.weight"]
        assert w.dtype == np.int8
        assert np.array_equal(w, np.where(layer.weight.detach().numpy() >= 0, 1, -1))  # sign(0) = +1
    ops = [n.op_type for n in model.graph.node]
    convs = [n for n in model.graph.node if n.name.startswith("bconv:")]
    assert len(convs) == len(layers) and "QuantizeLinear" in ops and "Pad" in ops  # pad_value=1: explicit pad
    assert all(list(a.ints) == [0, 0, 0, 0] for n in convs for a in n.attribute if a.name == "pads")
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["bitnas.input"])
    assert meta["mean"] == [0.25] and meta["std"] == [0.5] and meta["classes"][3] == "c3"
    assert json.loads(props["bitnas.arch"]) == exp["arch"] and props["bitnas.form"] == "qdq"
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [1, 28, 28]


# ------------------------------------------------------------------ command line

@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    if not (HAVE["onnx"] and HAVE["onnxruntime"] and HAVE["openvino"]):
        pytest.skip("onnx, onnxruntime and openvino needed (pip install 'bitnas[onnx,openvino]')")
    d = tmp_path_factory.mktemp("runtimes")
    ck = _checkpoint(d / "last.pt")
    for fmt, out in (("bitnas", "m.bitnas"), ("onnx", "m.onnx"), ("openvino", "m.xml")):
        assert main(["export", str(ck), "--out", str(d / out), "--format", fmt]) == 0
    return {"dir": d, "ck": ck, "bitnas": d / "m.bitnas", "onnx": d / "m.onnx", "xml": d / "m.xml"}


def test_eval_on_each_runtime_equals_the_float_path(exported, capsys) -> None:
    runs = [("bitnas", "torch"), ("onnx", "onnxruntime"), ("onnx", "openvino"), ("xml", "openvino")]
    got = {}
    for key, engine in runs:
        assert main(["eval", str(exported[key]), "--data", "fashion-mnist-embedded", "--json", "--engine", engine]) == 0
        got[key, engine] = json.loads(capsys.readouterr().out)
    ref = got["bitnas", "torch"]
    for run, r in got.items():
        assert r["num_images"] == 2000 and r["top1"] == ref["top1"] and r["top5"] == ref["top5"], run
        assert abs(r["loss"] - ref["loss"]) < 1e-4 * max(1.0, ref["loss"]), run
    assert got["xml", "openvino"]["engine"] == "openvino"


def test_infer_reads_normalisation_and_classes_from_the_file(exported, tmp_path, capsys) -> None:
    from bitnas.data.datasets import load_dataset

    img = tmp_path / "shoe.png"
    Image.fromarray(load_dataset("fashion-mnist-embedded", "test").images[0, 0].numpy()).save(img)
    outs = {}
    for key in ("bitnas", "onnx", "xml"):
        assert main(["infer", str(exported[key]), str(img), "--json", "--engine", "torch" if key == "bitnas" else "auto"]) == 0
        outs[key] = json.loads(capsys.readouterr().out)
    assert outs["onnx"]["engine"] == "onnxruntime" and outs["xml"]["engine"] == "openvino"
    for key in ("onnx", "xml"):
        mine, ref = outs[key]["predictions"][0]["top"], outs["bitnas"]["predictions"][0]["top"]
        assert [t["name"] for t in mine] == [t["name"] for t in ref]
        assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(mine, ref))


def test_export_replaces_its_own_files_only(exported, tmp_path, capsys) -> None:
    out = tmp_path / "again.onnx"
    for _ in range(2):
        assert main(["export", str(exported["ck"]), "--out", str(out), "--format", "onnx"]) == 0
    capsys.readouterr()
    notes = tmp_path / "notes.onnx"
    notes.write_text("keep me")
    refused(["export", str(exported["ck"]), "--out", str(notes), "--format", "onnx"], capsys,
            "is not a bitnas ONNX export; refusing to overwrite it", tmp_path)
    (tmp_path / "keep.bin").write_text("keep me")
    refused(["export", str(exported["ck"]), "--out", str(tmp_path / "keep.xml"), "--format", "openvino"], capsys,
            "is not a bitnas OpenVINO IR", tmp_path)
    refused(["export", str(exported["ck"]), "--out", str(tmp_path / "m.ir"), "--format", "openvino"], capsys,
            "an OpenVINO IR is an .xml file", tmp_path)
    refused(["export", str(exported["ck"]), "--out", str(tmp_path / "m.onnx"), "--format", "onnx", "--form", "int4"],
            capsys, "--form int4: --format onnx has forms qdq, float", tmp_path)


# ------------------------------------------------------------------ refusals

def _onnx_edit(src: Path, dst: Path, edit) -> Path:
    import onnx

    m = onnx.load(str(src))
    edit(m)
    dst.write_bytes(m.SerializeToString())
    return dst


def _custom_domain(m) -> None:
    m.graph.node[0].domain = "evil.ops"
    m.opset_import.add(domain="evil.ops", version=1)


def _external_data(m) -> None:
    from onnx import TensorProto

    t = m.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="/etc/passwd")


def _meta(key: str, value: str):
    def edit(m) -> None:
        for p in m.metadata_props:
            if p.key == key:
                p.value = value
    return edit


ONNX_CASES = {
    "junk": (lambda p: p.write_bytes(b"\x00\xffnot a model" * 10), "not an ONNX model"),
    "empty": (lambda p: p.write_bytes(b""), "not an ONNX model"),
    "truncated": (lambda p: p.write_bytes(Path(p.parent / "src.onnx").read_bytes()[:3000]), "not an ONNX model"),
    "custom op domain": (lambda p: _onnx_edit(p.parent / "src.onnx", p, _custom_domain), "only standard ONNX operators"),
    "external data": (lambda p: _onnx_edit(p.parent / "src.onnx", p, _external_data), "external tensor data"),
    "metadata not JSON": (lambda p: _onnx_edit(p.parent / "src.onnx", p, _meta("bitnas.input", "{oops")), "is not JSON"),
    "negative std": (lambda p: _onnx_edit(p.parent / "src.onnx", p, _meta("bitnas.input", json.dumps(
        {"in_channels": 1, "mean": [0.2], "std": [-1.0]}))), "input.std must be positive"),
    "string class count": (lambda p: _onnx_edit(p.parent / "src.onnx", p, _meta("bitnas.arch", json.dumps(
        {"network": {"num_classes": "ten"}}))), "arch.network.num_classes must be a positive integer"),
    "broken graph": (lambda p: _onnx_edit(p.parent / "src.onnx", p, lambda m: m.graph.node[3].input.__setitem__(
        0, "nowhere")), "invalid ONNX model"),
}


@pytest.mark.parametrize("case", sorted(ONNX_CASES))
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_malformed_onnx_files_are_refused(case: str, engine: str, exported, tmp_path, capsys) -> None:
    (tmp_path / "src.onnx").write_bytes(exported["onnx"].read_bytes())
    make, match = ONNX_CASES[case]
    bad = tmp_path / "bad.onnx"
    make(bad)
    refused(["eval", str(bad), "--data", "fashion-mnist-embedded", "--engine", engine], capsys, match, tmp_path)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    refused(["infer", str(bad), str(img), "--engine", engine], capsys, match, tmp_path)


IR_CASES = {
    "junk xml": (lambda x, b: (x.write_bytes(b"<<<>>>" * 50), b.write_bytes(b"")), "not an OpenVINO IR"),
    "truncated xml": (lambda x, b: x.write_bytes(x.read_bytes()[:2000]), "unreadable OpenVINO IR"),
    "missing bin": (lambda x, b: b.unlink(), "its weights file bad.bin is missing"),
    "short bin": (lambda x, b: b.write_bytes(b.read_bytes()[:100]), "unreadable OpenVINO IR"),
    "metadata not JSON": (lambda x, b: x.write_bytes(x.read_bytes().replace(b'<input value="{', b'<input value="{{')),
                          "is not JSON"),
}


@pytest.mark.parametrize("case", sorted(IR_CASES))
def test_malformed_openvino_files_are_refused(case: str, exported, tmp_path, capsys) -> None:
    xml, bin_ = tmp_path / "bad.xml", tmp_path / "bad.bin"
    xml.write_bytes(exported["xml"].read_bytes())
    bin_.write_bytes(exported["xml"].with_suffix(".bin").read_bytes())
    make, match = IR_CASES[case]
    make(xml, bin_)
    refused(["eval", str(xml), "--data", "fashion-mnist-embedded", "--engine", "openvino"], capsys, match, tmp_path)


def test_runtime_file_on_the_wrong_engine_is_refused(exported, tmp_path, capsys) -> None:
    refused(["eval", str(exported["xml"]), "--data", "fashion-mnist-embedded", "--engine", "onnxruntime"], capsys,
            "runs on --engine openvino", tmp_path)
    refused(["eval", str(exported["onnx"]), "--data", "fashion-mnist-embedded", "--engine", "bitpack"], capsys,
            "runs on engine onnxruntime or openvino", tmp_path)
    refused(["eval", str(exported["bitnas"]), "--data", "fashion-mnist-embedded", "--engine", "openvino"], capsys,
            "--format onnx|openvino", tmp_path)


@pytest.mark.parametrize("module,argv,extra", [
    ("onnxruntime", ["eval", "{onnx}", "--data", "fashion-mnist-embedded", "--engine", "onnxruntime"], "onnx"),
    ("openvino", ["eval", "{xml}", "--data", "fashion-mnist-embedded", "--engine", "openvino"], "openvino"),
    ("onnx", ["infer", "{onnx}", "{onnx}"], "onnx"),
    ("onnx", ["export", "{ck}", "--format", "onnx", "--out", "{tmp}/new.onnx"], "onnx"),
    ("openvino", ["export", "{ck}", "--format", "openvino", "--out", "{tmp}/new.xml"], "openvino"),
])
def test_a_missing_runtime_is_named_in_one_line(module: str, argv: list[str], extra: str, exported, tmp_path,
                                               capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    args = [a.format(onnx=exported["onnx"], xml=exported["xml"], ck=exported["ck"], tmp=tmp_path) for a in argv]
    before = files(exported["dir"])
    refused(args, capsys, f"pip install 'bitnas[{extra}]'", tmp_path)
    assert files(exported["dir"]) == before


@pytest.mark.skipif(not (HAVE["onnx"] and HAVE["openvino"]), reason="openvino not installed (pip install 'bitnas[openvino]')")
@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_openvino_binary_convolution_form_is_exact(pad_value: float, data, references, tmp_path) -> None:
    """Bi-Real at widths 16..64: every binary conv a BinaryConvolution with u1 weights."""
    from bitnas.deploy import openvino_export

    ref = _hand_designed("bireal", pad_value, data, references)
    exp = copy.deepcopy(ref.exp)
    exp["input"]["image_size"] = 28
    floats = network_from_export(exp)
    ir = openvino_export.ir_model(onnx_model(exp, floats).SerializeToString(), {"bitnas.input": json.dumps(exp["input"])})
    assert openvino_export.binary_convolutions(ir) == len(exp["binary"])
    openvino_export.write_ir(tmp_path / "b.xml", ir)
    assert b"BinaryConvolution" in (tmp_path / "b.xml").read_bytes()
    got = load_export(tmp_path / "b.xml", "openvino")(ref.x)[0]
    assert ref.ambiguous.float().mean() < 0.25
    assert relative_error(got, ref.want)[~ref.ambiguous].max() < 1e-4
