"""`bitnas export`, `bitnas infer` and `bitnas eval --engine bitpack` from the command line, and
every malformed, crafted or dangerous input refused with one line, exit 2 and nothing left behind."""
from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bitnas.cli import main
from bitnas.data import load_dataset
from bitnas.data.formats.embedded import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
from bitnas.deploy import container, engine, read_export
from bitnas.deploy.network import EngineNetwork
from bitnas.deploy.export import network_from_export
from bitnas.nets import arch_spec, build_network
from bitnas.space.genotypes import GENOTYPES
from bitnas.common.checkpoint import save_checkpoint

needs_engine = pytest.mark.skipif(not engine.available(), reason="C++ extension not built")
DATA = {"name": "fashion-mnist-embedded", "num_classes": 10, "in_channels": 1, "mean": list(FASHION_MNIST_MEAN),
        "std": list(FASHION_MNIST_STD), "classes": list(FASHION_MNIST_CLASSES)}


def _checkpoint(path: Path, data: dict | None = DATA, structure: str = "bireal") -> Path:
    torch.manual_seed(0)
    kw = dict(style="cifar", precision="binary", structure=structure, init_channels=4, layers=3, num_classes=10,
              in_channels=1)
    net = build_network(GENOTYPES.get("DARTS_V2"), **kw)
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 1, 28, 28))
    state = {"arch": arch_spec(GENOTYPES.get("DARTS_V2"), **kw), "model": net.state_dict(), "epoch": 3,
             "image_size": 28}
    if data is not None:
        state["data"] = data
    save_checkpoint(path, state)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("deploy")
    ck = _checkpoint(d / "last.pt")
    assert main(["export", str(ck), "--out", str(d / "model.bitnas")]) == 0
    bare = _checkpoint(d / "bare.pt", data=None)
    assert main(["export", str(bare), "--out", str(d / "bare.bitnas")]) == 0
    return {"dir": d, "ck": ck, "model": d / "model.bitnas", "bare": d / "bare.bitnas"}


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys, match: str, where: Path) -> None:
    """The command exits 2 with one `bitnas: error:` line containing `match`, and `where` is unchanged."""
    before = files(where)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitnas: error:") and "\n" not in err and "Traceback" not in err, err
    assert match in err, err
    assert files(where) == before


# ------------------------------------------------------------------ the happy paths

def test_export_file_is_sealed_and_carries_what_inference_needs(exported) -> None:
    raw = exported["model"].read_bytes()
    assert raw.startswith(container.MAGIC)
    exp = read_export(exported["model"])
    assert exp["input"]["mean"] == list(FASHION_MNIST_MEAN) and exp["input"]["image_size"] == 28
    assert exp["input"]["classes"] == list(FASHION_MNIST_CLASSES)
    assert exp["ops"]["structure"] == "bireal" and exp["arch"]["network"]["structure"] == "bireal"
    assert exp["ops"]["activation"] == "ste_sign" and exp["ops"]["pad_value"] == 0.0
    rows = exp["binary"]
    assert rows and all(r["bn"] for r in rows if r["name"].endswith(".conv") and "preprocess" in r["name"])
    # BN folded with α: dot·mul + add equals BN(α·dot) of the float network.
    net = network_from_export(exp)
    mods = dict(net.named_modules())
    row = next(r for r in rows if r["bn"])
    conv, bn = mods[row["name"]], mods[row["bn"]]
    mul, add = np.split(np.asarray(exp["fold"][row["fold"][0]:row["fold"][0] + row["fold"][1]]), 2)
    dot = torch.arange(-5, 6, dtype=torch.float64).view(-1, 1, 1, 1).expand(-1, conv.out_channels, 1, 1)
    a0 = row["alpha"][0]
    alpha = torch.from_numpy(exp["alpha"][a0:a0 + conv.out_channels].astype(np.float64)).view(1, -1, 1, 1)
    assert torch.equal(conv.binary_weight().abs().amax((1, 2, 3)).double(), alpha.flatten())  # the α in use
    with torch.no_grad():
        want = bn.double()(dot * alpha).squeeze().numpy()
    assert np.allclose(dot.squeeze().numpy() * mul + add, want, rtol=1e-12, atol=1e-12)


@needs_engine
def test_eval_through_the_engine_equals_the_float_path(exported, capsys) -> None:
    got = {}
    for eng in ("torch", "bitpack"):
        assert main(["eval", str(exported["model"]), "--data", "fashion-mnist-embedded", "--json", "--engine", eng]) == 0
        got[eng] = json.loads(capsys.readouterr().out)
    assert got["bitpack"]["engine"] == "bitpack" and got["bitpack"]["num_images"] == 2000
    assert got["bitpack"]["top1"] == got["torch"]["top1"]
    assert abs(got["bitpack"]["loss"] - got["torch"]["loss"]) < 1e-4 * max(1.0, got["torch"]["loss"])


@needs_engine
def test_infer_classifies_image_files_like_the_engine(exported, tmp_path, capsys) -> None:
    test = load_dataset("fashion-mnist-embedded", "test")
    pics = tmp_path / "pics"
    (pics / "sub").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(test.images[i, 0].numpy()).save(pics / ("sub" if i % 2 else "") / f"img{i}.png")
    assert main(["infer", str(exported["model"]), str(pics), "--json", "--topk", "3"]) == 0
    out = capsys.readouterr()
    r = json.loads(out.out)
    assert r["engine"] == "bitpack" and r["num_images"] == 5 and r["isa"] == engine.resolve_isa()
    f = engine.cpu_features()
    amx = f["amx_int8"] and f["amx_granted"]  # there the OpenVINO export is the faster deployment: one line says so
    assert r["note"] == (engine.AMX_NOTE if amx else None)
    assert out.err == (f"bitnas: {engine.AMX_NOTE}\n" if amx else "")
    paths = sorted(p for p in pics.rglob("*.png"))
    assert [p["file"] for p in r["predictions"]] == [str(p) for p in paths]
    exp = read_export(exported["model"])
    net = EngineNetwork(network_from_export(exp), exp)
    raw = torch.stack([torch.from_numpy(np.array(Image.open(p), dtype=np.uint8)) for p in paths]).unsqueeze(1)
    x = (raw.float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    with torch.no_grad():
        probs = torch.softmax(net(x)[0], 1)
    for pred, pr in zip(r["predictions"], probs):
        top = [t["class"] for t in pred["top"]]
        assert top == torch.topk(pr, 3).indices.tolist()
        assert [t["name"] for t in pred["top"]] == [FASHION_MNIST_CLASSES[c] for c in top]
        assert abs(pred["top"][0]["prob"] - pr.max().item()) < 1e-5
    assert main(["infer", str(exported["model"]), str(paths[0]), "--engine", "torch", "--topk", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{paths[0]}: {r['predictions'][0]['top'][0]['name']} ")


def test_export_may_replace_an_earlier_export(exported, tmp_path) -> None:
    out = tmp_path / "again.bitnas"
    assert main(["export", str(exported["ck"]), "--out", str(out)]) == 0
    assert main(["export", str(exported["ck"]), "--out", str(out)]) == 0
    assert read_export(out)["format"] == "bitnas-export"


# ------------------------------------------------------------------ refusals

def _craft(src: Path, dst: Path, edit) -> Path:
    """A copy of export `src` with `edit(header, sections)` applied, sealed with a valid SHA-256."""
    header, sections = container.read(src)
    sections = {k: np.array(v) for k, v in sections.items()}
    edit(header, sections)
    dst.write_bytes(container.encode(header, sections))
    return dst


def _set_net(key, value):
    return lambda h, s: h["arch"]["network"].__setitem__(key, value)


CRAFTED = {
    "short bit blob": (lambda h, s: s.__setitem__("bits", s["bits"][:-5]), "truncated data"),
    "short alpha": (lambda h, s: s.__setitem__("alpha", s["alpha"][:-1]), "truncated data"),
    "short fp32 data": (lambda h, s: s.__setitem__("fp32", s["fp32"][:-3]), "truncated data"),
    "short folded BN": (lambda h, s: s.__setitem__("fold", s["fold"][:-2]), "truncated data"),
    "negative init_channels": (_set_net("init_channels", -4), "init_channels must be an integer in 1..4096, got -4"),
    "a million cells": (_set_net("layers", 10 ** 6), "layers must be an integer in 1..256, got 1000000"),
    "huge width": (_set_net("init_channels", 10 ** 7), "init_channels must be an integer in 1..4096, got 10000000"),
    "wide enough to eat the machine": (_set_net("init_channels", 4000), "the network would have more than"),
    "wide but small data": (_set_net("init_channels", 64), "but the file holds only"),
    "more cells than data": (_set_net("layers", 200), "but the file holds only"),
    "one cell fewer": (_set_net("layers", 2), "layers = 2 but the stored tensors belong to 3 cells"),
    "unknown build key": (_set_net("turbo", True), "unknown network setting 'turbo'"),
    "string width": (_set_net("init_channels", "4"), "init_channels must be an integer in 1..4096, got '4'"),
    "unknown op": (lambda h, s: h["arch"]["genotype"]["normal"][0].__setitem__(0, "warp_conv"), "unknown op 'warp_conv'"),
    "future version": (lambda h, s: h.__setitem__("version", 99), "export version 99 not supported"),
    "bad mean": (lambda h, s: h["input"].__setitem__("mean", [0.1, 0.2]), "input.mean must list 1"),
    "zero std": (lambda h, s: h["input"].__setitem__("std", [0.0]), "input.std must be positive"),
    "bad stride": (lambda h, s: h["binary"][0].__setitem__("stride", [1]), "malformed stride"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_exports_are_refused_fast(case: str, exported, tmp_path, capsys) -> None:
    edit, match = CRAFTED[case]
    bad = _craft(exported["model"], tmp_path / "bad.bitnas", edit)
    t0 = time.perf_counter()
    refused(["eval", str(bad), "--data", "fashion-mnist-embedded"], capsys, match, tmp_path)
    assert time.perf_counter() - t0 < 10, "refused after building what the file claims"
    if engine.available():
        img = tmp_path / "x.png"
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
        refused(["infer", str(bad), str(img)], capsys, match, tmp_path)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["payload", "header", "digest"])
def test_bit_flipped_export_is_refused(where: str, exported, tmp_path, capsys) -> None:
    bad = tmp_path / "flipped.bitnas"
    bad.write_bytes(exported["model"].read_bytes())
    size = bad.stat().st_size
    _flip(bad, {"payload": size - 100, "header": 40, "digest": size - 3}[where])
    refused(["eval", str(bad), "--data", "fashion-mnist-embedded"], capsys, "SHA-256 mismatch", tmp_path)


@pytest.mark.parametrize("cut,match", [(-1, "truncated"), (-2000, "truncated"), (20, "not a bitnas export"),
                                       (0, "not a bitnas export")])
def test_truncated_export_is_refused(cut: int, match: str, exported, tmp_path, capsys) -> None:
    bad = tmp_path / "cut.bitnas"
    bad.write_bytes(exported["model"].read_bytes()[:cut])
    refused(["infer", str(bad), str(exported["model"])], capsys, match, tmp_path)


def test_trailing_bytes_are_refused(exported, tmp_path, capsys) -> None:
    bad = tmp_path / "long.bitnas"
    bad.write_bytes(exported["model"].read_bytes() + b"junk")
    refused(["eval", str(bad), "--data", "fashion-mnist-embedded"], capsys, "trailing bytes", tmp_path)


def test_export_claiming_a_huge_header_is_refused(exported, tmp_path, capsys) -> None:
    raw = bytearray(exported["model"].read_bytes())
    raw[12:20] = (1 << 40).to_bytes(8, "little")
    bad = tmp_path / "huge.bitnas"
    bad.write_bytes(bytes(raw))
    refused(["eval", str(bad), "--data", "fashion-mnist-embedded"], capsys, "exceeds the", tmp_path)


def test_export_out_refusals(exported, tmp_path, capsys) -> None:
    ck = tmp_path / "last.pt"
    ck.write_bytes(exported["ck"].read_bytes())
    folder = tmp_path / "folder"
    folder.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for out, match in [(folder, "is a directory"), ("/proc/bitnas-test.bitnas", "under /proc"),
                       (notes, "exists and is not a bitnas export"), (ck, "is the checkpoint being exported"),
                       (notes / "x.bitnas", "is not a directory")]:
        refused(["export", str(ck), "--out", str(out)], capsys, match, tmp_path)
    assert not Path("/proc/bitnas-test.bitnas").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_export_to_a_read_only_folder_is_refused(exported, tmp_path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        refused(["export", str(exported["ck"]), "--out", str(ro / "m.bitnas")], capsys, "is not writable", tmp_path)
    finally:
        ro.chmod(0o700)


def test_full_disk_keeps_the_previous_export(exported, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "m.bitnas"
    assert main(["export", str(exported["ck"]), "--out", str(out)]) == 0
    capsys.readouterr()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("bitnas.common.files.os.fsync", full)
    refused(["export", str(exported["ck"]), "--out", str(out)], capsys, "No space left on device", tmp_path)
    assert read_export(out)["format"] == "bitnas-export"


@needs_engine
def test_infer_refusals(exported, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    refused(["infer", str(exported["model"]), str(tmp_path / "nope.png")], capsys, "no such image", tmp_path)
    refused(["infer", str(exported["model"]), str(empty)], capsys, "no images", tmp_path)
    refused(["infer", str(exported["model"]), str(broken)], capsys, "unreadable image", tmp_path)
    refused(["infer", str(exported["bare"]), str(broken)], capsys, "holds no input normalisation", tmp_path)
    refused(["infer", str(exported["ck"]), str(broken)], capsys, "not a bitnas export", tmp_path)
    refused(["infer", str(tmp_path / "missing.bitnas"), str(broken)], capsys, "export not found", tmp_path)


def test_eval_engine_refusals(exported, tmp_path, capsys, monkeypatch) -> None:
    refused(["eval", str(exported["ck"]), "--data", "fashion-mnist-embedded", "--engine", "bitpack"], capsys,
            "export this checkpoint first", tmp_path)
    monkeypatch.setattr(engine, "_load", lambda: None)
    refused(["eval", str(exported["model"]), "--data", "fashion-mnist-embedded", "--engine", "bitpack"], capsys,
            "C++ extension (bitnas.deploy._engine) is not built", tmp_path)


@needs_engine
def test_forcing_an_isa_row_the_cpu_lacks_stops_in_one_line(exported, tmp_path, capsys, monkeypatch) -> None:
    """BITNAS_ENGINE_ISA naming a row this CPU lacks (simulated: the avx512 row without VPOPCNTDQ)
    or no row at all: exit 2, one `bitnas: error:` line naming the problem."""
    fake = [dict(r, supported=False, missing="avx512vpopcntdq") if r["name"] == "avx512" else r for r in engine.isas()]
    monkeypatch.setattr(engine, "isas", lambda: fake)
    monkeypatch.setattr(engine, "_checked", engine._checked.__wrapped__)
    test = load_dataset("fashion-mnist-embedded", "test")
    pic = tmp_path / "pic.png"
    Image.fromarray(test.images[0, 0].numpy()).save(pic)
    monkeypatch.setenv(engine.ENV_ISA, "avx512")
    refused(["infer", str(exported["model"]), str(pic)], capsys, "lacks avx512vpopcntdq", exported["model"].parent)
    monkeypatch.setenv(engine.ENV_ISA, "sse9")
    refused(["infer", str(exported["model"]), str(pic)], capsys, "'sse9' is not one of auto, reference, scalar, avx2, avx512",
            exported["model"].parent)


def test_eval_of_an_export_resizes_image_folders_to_its_input_size(exported, tmp_path, capsys) -> None:
    """An export knows its 28×28 input: `bitnas eval` resizes 32×32 imagefolder data to it (the same
    numbers as data saved at 28×28), as it does for a training checkpoint."""
    results = {}
    for side in (28, 32):
        root = tmp_path / f"f{side}"
        for split in ("train", "test"):
            for c in range(10):
                (root / split / f"c{c}").mkdir(parents=True)
                img = Image.fromarray(np.full((28, 28), 20 * c, np.uint8)).resize((side, side), Image.Resampling.NEAREST)
                img.save(root / split / f"c{c}" / "x.png")
        assert main(["eval", str(exported["model"]), "--data", f"imagefolder:{root}", "--json"]) == 0
        results[side] = json.loads(capsys.readouterr().out)
    assert results[28]["num_images"] == results[32]["num_images"] == 10
    assert results[28]["top1"] == results[32]["top1"] and abs(results[28]["loss"] - results[32]["loss"]) < 1e-4


def test_infer_with_an_export_without_input_size_runs_small_images_at_their_size(exported, tmp_path, capsys) -> None:
    """No stored input size: images of at most 256×256 run at their own size; the size used is reported."""
    bare = _craft(exported["model"], tmp_path / "nosize.bitnas", lambda h, s: h["input"].update(image_size=None))
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "a.png")
    assert main(["infer", str(bare), str(tmp_path / "a.png"), "--json", "--engine", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == [40, 40]


def test_infer_batches_are_bounded_by_pixels(exported, tmp_path, capsys, monkeypatch) -> None:
    """An export claiming 448×448 inputs decodes 64·224² / 448² = 16 images per forward pass, not 64.
    The rule runs here at a 64th of the pixels (a budget of 64·28², a 56×56 export: 16 images per
    pass), so the network's forward passes stay small; the real budget gives 16 at 448×448."""
    from bitnas.data.formats import imagefolder
    from bitnas.deploy import cli as deploy_cli

    assert deploy_cli.MAX_BATCH_PIXELS // (448 * 448) == 16
    monkeypatch.setattr(deploy_cli, "MAX_BATCH_PIXELS", deploy_cli.MAX_BATCH_PIXELS // 64)
    big = _craft(exported["model"], tmp_path / "big.bitnas", lambda h, s: h["input"].update(image_size=56))
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(20):
        Image.fromarray(np.full((28, 28), 10 * i, np.uint8)).save(pics / f"{i:02d}.png")
    sizes, real = [], imagefolder._decode

    def spy(items, mode, hw):
        sizes.append(len(items))
        return real(items, mode, hw)

    monkeypatch.setattr(imagefolder, "_decode", spy)
    assert main(["infer", str(big), str(pics), "--json", "--engine", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 20 and sizes == [16, 4]
