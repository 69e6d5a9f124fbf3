"""Every bad input is refused with one line `bitnas: error: …`, exit code 2, no traceback, and
nothing left behind: no run directory is made, no existing file is changed.

Each case builds its inputs in a fresh directory (the working directory of the command, so a
default `runs/…` would land there too), runs the command line in this process, and compares the
directory's files and their contents before and after.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from bitnas.cli import main
from bitnas.deploy import container
from bitnas.deploy.export import export_checkpoint
from bitnas.nets import arch_spec, build_network
from bitnas.space.genotypes import GENOTYPES
from bitnas.common.checkpoint import load_checkpoint, save_checkpoint

S = ["search", "--data", "fashion-mnist-embedded", "--train-subset", "40", "--batch-size", "8", "--init-channels", "2",
     "--layers", "1", "--out", "out", "progress=off", "threads=1"]
T = ["train", "--genotype", "DARTS_V2", "--data", "fashion-mnist-embedded", "--train-subset", "40", "--batch-size", "8",
     "--init-channels", "2", "--layers", "1", "--epochs", "1", "--out", "out", "progress=off", "threads=1",
     "test_subset=20"]


def opt(argv: list[str], flag: str, value: str) -> list[str]:
    """`argv` with option `flag` set to `value` (replaced if present)."""
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out[1:1] = [flag, value]
    return out


def tiny_checkpoint(d: Path, name: str = "ck.pt", top: dict | None = None, **network: object) -> Path:
    """A real bitnas training checkpoint of a tiny network (C=2, 1 cell); `network` overrides stored
    build settings and `top` top-level entries (forged files)."""
    kw = dict(style="cifar", precision="binary", structure="cpnas", init_channels=2, layers=1, num_classes=10,
              in_channels=1)
    g = GENOTYPES.get("DARTS_V2")
    model = build_network(g, **kw)
    spec = arch_spec(g, **kw)
    spec["network"].update(network)
    path = d / name
    save_checkpoint(path, {"format": "bitnas-train/1", "arch": spec, "model": model.state_dict(), "epoch": 1,
                           **(top or {})})
    return path


def flipped_checkpoint(d: Path) -> Path:
    """A checkpoint with one bit flipped inside a stored tensor (a disk or copy error)."""
    path = tiny_checkpoint(d)
    data = bytearray(path.read_bytes())
    stored = torch.load(path, weights_only=True)["model"]["classifier.weight"].numpy().tobytes()
    at = data.find(stored[:16])
    assert at > 0
    data[at + 3] ^= 0x04
    path.write_bytes(bytes(data))
    return path


def empty_file(d: Path, name: str = "e.pt") -> str:
    (d / name).touch()
    return name


def with_file(d: Path, name: str, text: str, argv: list[str]) -> list[str]:
    (d / name).write_text(text)
    return argv


def earlier_run(d: Path, command: str, argv: list[str]) -> list[str]:
    fake_run(d, command)
    return argv


def empty_last_pt(d: Path) -> list[str]:
    (fake_run(d, "train") / "last.pt").write_bytes(b"")
    return T + ["--resume"]


class Evil:
    """Unpickling this would run a shell command: a checkpoint must never execute what it contains."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(d: Path) -> Path:
    path = d / "parent.pt"
    buf = io.BytesIO()
    torch.save({"arch": Evil(d / "pwned")}, buf, pickle_protocol=2)
    path.write_bytes(buf.getvalue())
    return path


def fake_run(d: Path, command: str) -> Path:
    """The files an earlier run of `command` left in d/out."""
    out = d / "out"
    (out / "plots").mkdir(parents=True)
    (out / "config.yaml").write_text(f"command: {command}\nseed: 0\n")
    (out / "last.pt").write_bytes(b"checkpoint of the earlier run")
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (out / ("genotype.json" if command == "search" else "result.json")).write_text("{}\n")
    return out


def image_folder(d: Path, side: int = 8, empty_class: bool = False) -> Path:
    root = d / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            if empty_class and split == "train" and c == "b":
                continue
            for i in range(4):
                Image.fromarray(np.full((side, side), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
    return root


def genotype_file(d: Path, content: bytes, name: str = "g.json") -> str:
    (d / name).write_bytes(content)
    return name


TINY_STUDY = {"name": "t", "data": "fashion-mnist-embedded", "seeds": [0],
              "protocol": {"init_channels": 2, "layers": 1, "epochs": 1, "train_subset": 40, "batch_size": 8,
                           "test_subset": 20},
              "arms": [{"name": "v2", "genotype": "DARTS_V2"}]}
STUDY = ["study", "s.yaml", "--out", "st"]
GOOD_RECORD = {"id": "v2/s0/train", "arm": "v2", "kind": "train", "seed": 0, "val_top1": 10.0, "test_top1": 10.0,
               "test_top5": 50.0, "ops": 1000, "params_1bit": 10, "params_32bit": 10, "bops": 10, "flops": 10,
               "search_seconds": 0.0, "search_images": 0}


def study_file(d: Path, text: str | None = None, **changes: object) -> list[str]:
    """s.yaml: TINY_STUDY with top-level `changes` (None removes a key), or `text` verbatim; the argv
    of `bitnas study s.yaml --out st`."""
    spec = {k: v for k, v in {**TINY_STUDY, **changes}.items() if v is not None}
    (d / "s.yaml").write_text(text if text is not None else json.dumps(spec))
    return list(STUDY)


def earlier_study(d: Path, trials: str | None = None, study_yaml: bytes | None = None) -> list[str]:
    """A study folder st/ of TINY_STUDY as a finished run left it, with `trials` as its trials.jsonl
    and `study_yaml` (default: the spec as the study wrote it) as its study.yaml."""
    import yaml

    from bitnas.study.spec import parse_spec

    argv = study_file(d)
    (d / "st").mkdir()
    (d / "st" / "study.yaml").write_bytes(
        study_yaml if study_yaml is not None else yaml.safe_dump(parse_spec(dict(TINY_STUDY)).to_dict()).encode())
    if trials is not None:
        (d / "st" / "trials.jsonl").write_text(trials)
    return argv


def billion_laughs() -> str:
    """Nine levels of ten aliases each: 10**9 values once expanded, a few hundred bytes on disk."""
    lines = ["description:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines + ["seeds: *l8", "name: t", "arms: [{genotype: DARTS_V2}]"]) + "\n"


_HIDDEN: list[str] = []


def without_module(name: str, argv: list[str]) -> list[str]:
    """argv, run as if module `name` were not installed."""
    _HIDDEN.append(name)
    return argv


def png_header(d: Path, name: str, width: int, height: int) -> Path:
    """A PNG whose header declares width×height 8-bit gray pixels (its data is a few bytes: the
    file is tiny, the image it claims is not)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = d / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def tiny_export(d: Path, edit: Callable[[dict], None] | None = None, raw: Callable[[str], str] | None = None,
                name: str = "m.bitnas", image_size: int | None = 28) -> str:
    """A real export of tiny_checkpoint (28×28 gray inputs, normalisation known); `edit` changes its
    header dict and `raw` its header text; the file is re-sealed, so its SHA-256 is valid."""
    ck = tiny_checkpoint(d, "exp.pt", top={"image_size": image_size,
                                           "data": {"mean": [0.5], "std": [0.25], "name": "fashion-mnist"}})
    export_checkpoint(ck, d / name)
    ck.unlink()
    if edit or raw:
        header, sections = container.read(d / name)
        if edit:
            edit(header)
        data = container.encode(header, sections)
        prefix = struct.Struct("<8sIQQ")
        magic, version, hlen, plen = prefix.unpack_from(data)
        text = data[prefix.size:prefix.size + hlen].decode()
        if raw:
            text = raw(text)
        body = prefix.pack(magic, version, len(text.encode()), plen) + text.encode() + \
            data[prefix.size + hlen:-container.DIGEST_BYTES]
        (d / name).write_bytes(body + hashlib.sha256(body).digest())
    return name


def gray_png(d: Path, name: str, side: int) -> str:
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(d / name)
    return name


def truncated_png(d: Path) -> Path:
    """A 28×28 noise PNG cut in the middle of its pixel data."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(d / "t.png")
    data = (d / "t.png").read_bytes()
    (d / "t.png").write_bytes(data[:len(data) // 2])
    return d / "t.png"


def idx_folder(d: Path, side: int) -> str:
    """idx:DIR of a few side×side gray images in 10 classes (both splits)."""
    from tests.conftest import IMAGES_MAGIC, LABELS_MAGIC, write_idx

    root = d / "idx"
    root.mkdir()
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte", np.zeros((20, side, side), np.uint8), IMAGES_MAGIC)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(20, dtype=np.uint8) % 10, LABELS_MAGIC)
    return f"idx:{root}"


def with_big_image(root: Path) -> Path:
    png_header(root, "train/a/huge.png", 60000, 60000)
    return root


WRONG_TYPE_EDGE = json.dumps({"normal": "sep_conv_3x3", "normal_concat": [2], "reduce": [], "reduce_concat": [2]})

# (id, inputs → argv, a piece of the expected message)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # tracebacks before
    ("genotype file not UTF-8", lambda d: opt(T, "--genotype", genotype_file(d, b"\xff\xfe{bad")), "not UTF-8"),
    ("seed too large", lambda d: S + ["seed=99999999999999999999999"], "seed: must be in 0..9223372036854775807"),
    ("arch_lr negative", lambda d: opt(S, "--strategy", "pcdarts") + ["arch_lr=-5"], "arch_lr: must be >= 0"),
    ("summary init-channels 0", lambda d: ["summary", "--genotype", "DARTS_V2", "--init-channels", "0"],
     "init_channels must be an integer in 1..4096"),
    ("summary image-size 1 imagenet", lambda d: ["summary", "--genotype", "DARTS_V2", "--image-size", "1", "--style",
                                                 "imagenet", "--init-channels", "8", "--layers", "3"],
     "1×1 inputs are too small for a imagenet-style network"),
    ("summary empty checkpoint", lambda d: ["summary", "--checkpoint", empty_file(d)],
     "e.pt: empty file (0 bytes)"),
    ("eval empty checkpoint", lambda d: ["eval", empty_file(d), "--data", "fashion-mnist-embedded"],
     "e.pt: empty file (0 bytes)"),
    ("train resume from empty last.pt", empty_last_pt, "last.pt: empty file"),
    # resource bombs
    ("checkpoint claims 10**6 layers", lambda d: ["summary", "--checkpoint", str(tiny_checkpoint(d, layers=10**6))],
     "layers must be an integer in 1..256"),
    ("checkpoint claims a huge width", lambda d: ["summary", "--checkpoint", str(tiny_checkpoint(d, init_channels=4000, layers=20))],
     "the network would have more than"),
    ("checkpoint claims more than it holds", lambda d: ["eval", str(tiny_checkpoint(d, layers=200)), "--data",
                                                        "fashion-mnist-embedded"],
     "needs at least"),
    ("checkpoint with an unknown build key", lambda d: ["summary", "--checkpoint", str(tiny_checkpoint(d, rm_rf=1))],
     "unknown network setting 'rm_rf'"),
    ("checkpoint whose architecture is text", lambda d: ["eval", str(tiny_checkpoint(d, top={"arch": "x"})), "--data",
                                                        "fashion-mnist-embedded"], "no stored architecture/weights"),
    ("checkpoint with a NaN setting", lambda d: ["summary", "--checkpoint", str(tiny_checkpoint(d, pad_value=math.nan))],
     "pad_value must be a finite number, got nan"),
    ("checkpoint with a text image size", lambda d: ["eval", str(tiny_checkpoint(d, top={"image_size": "big"})),
                                                     "--data", f"imagefolder:{image_folder(d)}"],
     "image_size: the input side must be an integer"),
    # accepted before, should not be
    ("lr=inf", lambda d: T + ["lr=inf"], "'lr' must be a finite number"),
    ("lr=nan", lambda d: T + ["lr=nan"], "'lr' must be a finite number"),
    ("search epochs 0", lambda d: opt(opt(S, "--strategy", "pcdarts"), "--epochs", "0"),
     "a pcdarts search needs at least 1 epoch"),
    ("train subset smaller than a batch", lambda d: opt(opt(T, "--train-subset", "20"), "--batch-size", "32"),
     "cannot fill one batch of 32"),
    ("train subset missing classes", lambda d: opt(opt(T, "--train-subset", "8"), "--batch-size", "4"),
     "training images hold no image of 3 of the 10 classes ('T-shirt/top', 'Trouser', 'Pullover')"),
    ("search subset missing classes", lambda d: opt(opt(S, "--train-subset", "12"), "--batch-size", "2"),
     "of the 10 classes"),
    ("image folder with an empty class", lambda d: opt(T, "--data", f"imagefolder:{image_folder(d, empty_class=True)}"),
     "train/b: empty class folder"),
    ("images too small for the network", lambda d: opt(opt(opt(T, "--data", f"imagefolder:{image_folder(d, side=1)}"),
                                                           "--train-subset", "8"), "--batch-size", "4") + ["layers=3", "test_subset=0"],
     "1×1 inputs are too small"),
    ("bit-flipped checkpoint", lambda d: ["eval", str(flipped_checkpoint(d)), "--data", "fashion-mnist-embedded"],
     "corrupt checkpoint: its bytes no longer match the SHA-256"),
    ("search --out on a training run", lambda d: earlier_run(d, "train", S), "holds an earlier train run"),
    ("train --out on a search run", lambda d: earlier_run(d, "search", T), "holds an earlier search run"),
    ("train --out on an earlier training run", lambda d: earlier_run(d, "train", T),
     "use --resume to continue it, --force to replace it"),
    ("search --resume on a training run", lambda d: earlier_run(d, "train", S + ["--resume"]),
     "holds a train run, not a search"),
    # refused, but used to leave a half-made run folder
    ("cp_temperature=0", lambda d: S + ["cp_temperature=0"], "cp_temperature must be > 0"),
    ("rounds 0", lambda d: opt(S, "--rounds", "0"), "rounds (T) must be at least 1"),
    ("sample-steps -1", lambda d: opt(S, "--sample-steps", "-1"), "sample_steps must be ≥ 0"),
    ("search epochs -3", lambda d: opt(opt(S, "--strategy", "pcdarts"), "--epochs", "-3"), "needs at least 1 epoch"),
    ("search batch-size 0", lambda d: opt(S, "--batch-size", "0"), "batch_size: must be at least 1"),
    ("space foo", lambda d: opt(S, "--space", "foo"), "unknown search space 'foo'"),
    ("structure foo", lambda d: opt(S, "--structure", "foo"), "'foo'"),
    ("activation foo", lambda d: S + ["activation=foo"], "unknown quantizer 'foo'"),
    ("weight_quantizer foo", lambda d: T + ["weight_quantizer=foo"], "unknown quantizer 'foo'"),
    ("malicious parent_checkpoint", lambda d: T + ["method=cp", f"parent_checkpoint={evil_checkpoint(d)}"],
     "not a bitnas checkpoint (UnpicklingError"),
    # cosmetic
    ("empty genotype name", lambda d: opt(T, "--genotype", ""), "genotype: empty; give a registered name"),
    ("wrong-type JSON edge", lambda d: opt(T, "--genotype", genotype_file(d, WRONG_TYPE_EDGE.encode())),
     "'normal' must be a list of [op, input] edges, got a str"),
    # --out that cannot hold a run
    ("--out is a file", lambda d: with_file(d, "f", "x", opt(S, "--out", "f")), "exists and is not a directory"),
    ("--out below a file", lambda d: with_file(d, "f", "x", opt(T, "--out", "f/run")), "is not a directory"),
    ("--out under /proc", lambda d: opt(T, "--out", "/proc/bitnas-run"), "cannot create a run directory in /proc"),
    # more options
    ("unknown dataset", lambda d: opt(T, "--data", "fashion-mnits"), "unknown dataset 'fashion-mnits'"),
    ("idx without a directory", lambda d: opt(S, "--data", f"idx:{d / 'nope'}"), "directory does not exist"),
    ("val_fraction 1", lambda d: S + ["val_fraction=1"], "val_fraction: must be in (0, 1)"),
    ("train layers 0", lambda d: opt(T, "--layers", "0"), "layers: must be at least 1"),
    ("search init-channels 0", lambda d: opt(S, "--init-channels", "0"), "init_channels: must be at least 1"),
    ("threads -1", lambda d: S + ["threads=-1"], "threads: must be >= 0"),
    ("train epochs 0", lambda d: opt(T, "--epochs", "0"), "epochs: must be at least 1"),
    ("unrolled with adam", lambda d: opt(S, "--strategy", "darts") + ["--unrolled", "w_optimizer=adam"],
     "needs w_optimizer: sgd"),
    # issue 15: bitnas study
    ("study YAML nested 10000 deep", lambda d: study_file(d, "protocol: " + "[" * 10000 + "]" * 10000 + "\n"),
     "nests deeper than 64 levels"),
    ("study YAML billion laughs", lambda d: study_file(d, billion_laughs()), "expands to more than 100,000 values"),
    ("study YAML alias to itself", lambda d: study_file(d, "name: t\nseeds: &s [*s]\n"), "refers to itself"),
    ("study protocol a list", lambda d: study_file(d, protocol=[1, 2]), "protocol must be a mapping"),
    ("study protocol.KEY over a list", lambda d: study_file(d, protocol=[1]) + ["protocol.epochs=1"],
     "protocol must be a mapping"),
    ("study override workers=[1", lambda d: study_file(d) + ["workers=[1"], "override 'workers=[1': not valid YAML"),
    ("study override protocol.epochs=[", lambda d: study_file(d) + ["protocol.epochs=["], "not valid YAML"),
    ("study name with a NUL byte", lambda d: study_file(d, name="a\0b"), "name 'a\\x00b' must be"),
    ("study name climbing out of runs/", lambda d: study_file(d, name="../../etc"), "must be letters"),
    ("study name too long", lambda d: study_file(d, name="n" * 300), "at most 100 characters"),
    ("study --out is a file", lambda d: with_file(d, "f", "x", opt(study_file(d), "--out", "f")),
     "exists and is not a directory"),
    ("study --out below a file", lambda d: with_file(d, "f", "x", opt(study_file(d), "--out", "f/st")),
     "is not a directory"),
    ("study --out under /proc", lambda d: opt(study_file(d), "--out", "/proc/bitnas-study"), "cannot create"),
    ("study spec not UTF-8", lambda d: genotype_file(d, b"name: \xff\xfe", "s.yaml") and list(STUDY), "not UTF-8"),
    ("study spec a directory", lambda d: (d / "sd").mkdir() or ["study", "sd", "--out", "st"], "study sd: not a file"),
    ("study spec over 256 KiB", lambda d: study_file(d, "# " + "x" * (256 << 10) + "\n"), "bytes a study may hold"),
    ("study rerun: study.yaml a list", lambda d: earlier_study(d, study_yaml=b"- 1\n- 2\n"),
     "study.yaml: not a study"),
    ("study rerun: study.yaml not UTF-8", lambda d: earlier_study(d, study_yaml=b"name: \xff\n"), "not UTF-8"),
    ("study rerun: study.yaml not YAML", lambda d: earlier_study(d, study_yaml=b"name: [\n"), "not valid YAML"),
    ("study rerun: record with an id only", lambda d: earlier_study(d, '{"id": "v2/s0/train"}\n'),
     "trials.jsonl: line 1: record lacks 'arm'"),
    ("study rerun: record with a text figure",
     lambda d: earlier_study(d, json.dumps({**GOOD_RECORD, "test_top1": "abc"}) + "\n"),
     "trials.jsonl: line 1: 'test_top1' must be a number"),
    ("study rerun: record of another arm",
     lambda d: earlier_study(d, json.dumps({**GOOD_RECORD, "arm": "x"}) + "\n"), "line 1: 'arm' must be 'v2'"),
    ("study rerun: record that is a list", lambda d: earlier_study(d, "[1]\n" + json.dumps(GOOD_RECORD) + "\n"),
     "trials.jsonl: line 1 is not a JSON object"),
    ("study rerun: bad line before the last", lambda d: earlier_study(d, "{oops\n" + json.dumps(GOOD_RECORD) + "\n"),
     "trials.jsonl: line 1 is not a JSON record"),
    ("study data unknown", lambda d: study_file(d, data="fashion-mnits"), "unknown dataset 'fashion-mnits'"),
    ("study data missing folder", lambda d: study_file(d, data=f"idx:{d / 'nope'}"), "directory does not exist"),
    ("study protocol structure nonsense", lambda d: study_file(d, protocol={**TINY_STUDY["protocol"],
                                                                         "structure": "nonsense"}), "'nonsense'"),
    ("study protocol device cuda", lambda d: study_file(d, protocol={**TINY_STUDY["protocol"], "device": "cuda"}),
     "CUDA is not available"),
    ("study protocol absurd width", lambda d: study_file(d, protocol={**TINY_STUDY["protocol"], "init_channels": 4000,
                                                                    "layers": 200}), "parameters (limit"),
    ("study protocol batch larger than the subset", lambda d: study_file(d, protocol={**TINY_STUDY["protocol"],
                                                                                     "batch_size": 64}),
     "cannot fill one batch of 64"),
    ("study search arm with cuda", lambda d: study_file(d, arms=[{"name": "cp", "strategy": "cpnas",
                                                                  "search": {"device": "cuda"}}]),
     "CUDA is not available"),
    ("study search subset too small", lambda d: study_file(d, search={"train_subset": 4},
                                                           arms=[{"name": "cp", "strategy": "cpnas"}]),
     "cannot fill one batch"),
    ("study executor ray without Ray", lambda d: without_module("ray", study_file(d, executor="ray")),
     "Ray is not installed"),
    ("study ray_address unreachable", lambda d: study_file(d, executor="ray", ray_address="127.0.0.1:9"),
     "cannot reach a Ray cluster at 127.0.0.1:9"),
    ("study ray_address a list", lambda d: study_file(d, executor="ray", ray_address=[1]),
     "ray_address must be HOST:PORT text, got [1]"),
    ("infer a FIFO", lambda d: os.mkfifo(d / "f.png") or ["infer", tiny_export(d), "f.png"],
     "f.png: not a regular file or folder"),
    ("study seeds a huge text", lambda d: study_file(d, seeds="s" * 5000), "seeds must be"),
    ("study rerun: record nested 100k deep",
     lambda d: earlier_study(d, "[" * 100_000 + "]" * 100_000 + "\n" + json.dumps(GOOD_RECORD) + "\n"),
     "trials.jsonl: line 1 is not a JSON record (nested too deeply)"),
    ("study rerun: record with an infinite figure",
     lambda d: earlier_study(d, json.dumps(GOOD_RECORD).replace('"ops": 1000', '"ops": 1e999') + "\n"),
     "line 1: 'ops' must be a number ≥ 0, got inf"),
    ("study rerun: record with top-1 above 100",
     lambda d: earlier_study(d, json.dumps({**GOOD_RECORD, "test_top1": 1e308}) + "\n"),
     "line 1: 'test_top1' must be a number in 0..100, got 1e+308"),
    ("study name override ../x", lambda d: study_file(d) + ["name=../x"], "name '../x' must be letters"),
    ("study --fidelity without a fidelity block", lambda d: study_file(d) + ["--fidelity"],
     "--fidelity needs a fidelity: block"),
    ("study imagefolder with a 60000x60000 PNG", lambda d: study_file(d, data=f"imagefolder:{with_big_image(image_folder(d))}"),
     "trial v2/s0/train would fail: "),
    ("train recipe billion laughs", lambda d: with_file(d, "r.yaml", billion_laughs().replace("seeds:", "lr:"),
                                                        T + ["--config", "r.yaml"]), "r.yaml: expands to more than"),
    # issue 15: bitnas infer, eval --engine, .bitnas files
    ("infer 60000x60000 PNG", lambda d: ["infer", tiny_export(d), str(png_header(d, "big.png", 60000, 60000))],
     "big.png: the image declares 3,600,000,000 pixels"),
    ("train imagefolder with a 60000x60000 PNG",
     lambda d: opt(T, "--data", f"imagefolder:{with_big_image(image_folder(d))}"), "huge.png: the image declares 3,600,000,000 pixels"),
    ("eval imagefolder with a 60000x60000 PNG",
     lambda d: ["eval", tiny_export(d), "--data", f"imagefolder:{with_big_image(image_folder(d))}"],
     "huge.png: the image declares 3,600,000,000 pixels"),
    ("infer export without image size on a 3000x3000 image",
     lambda d: ["infer", tiny_export(d, image_size=None), gray_png(d, "big.png", 3000)],
     "holds no input image size"),
    ("eval 28x28 export on 32x32 data", lambda d: ["eval", tiny_export(d), "--data", idx_folder(d, 32)],
     "trained on 28×28 images"),
    ("eval 28x28 checkpoint on 32x32 data",
     lambda d: ["eval", str(tiny_checkpoint(d, top={"image_size": 28})), "--data", idx_folder(d, 32)],
     "trained on 28×28 images"),
    ("export without input.in_channels",
     lambda d: ["infer", tiny_export(d, lambda h: h["input"].pop("in_channels")), gray_png(d, "i.png", 28)],
     "input.in_channels"),
    ("export claiming 3 input channels",
     lambda d: ["infer", tiny_export(d, lambda h: h["input"].update(in_channels=3)), gray_png(d, "i.png", 28)],
     "input.in_channels is 3 but the network takes 1"),
    ("export with a text channel count",
     lambda d: ["eval", tiny_export(d, lambda h: h["input"].update(in_channels="1")), "--data",
                "fashion-mnist-embedded"], "input.in_channels"),
    ("export header nested 100k levels",
     lambda d: ["infer", tiny_export(d, lambda h: h["input"].update(classes="@@"),
                                     raw=lambda t: t.replace('"@@"', "[" * 100_000 + "]" * 100_000)),
                gray_png(d, "i.png", 28)], "header nests deeper than"),
    ("export header with NaN", lambda d: ["infer", tiny_export(d, lambda h: h["input"].update(mean="@@"),
                                                               raw=lambda t: t.replace('"@@"', "[NaN]")),
                                          gray_png(d, "i.png", 28)], "not JSON"),
    ("export header input a list",
     lambda d: ["eval", tiny_export(d, lambda h: h.update(input=[1])), "--data", "fashion-mnist-embedded",
                "--engine", "bitpack"], "no input description"),
    ("export header classes of the wrong count",
     lambda d: ["infer", tiny_export(d, lambda h: h["input"].update(classes=["a"])), gray_png(d, "i.png", 28)],
     "input.classes names 1 classes, the network has 10"),
    ("export claiming 1x1 inputs",
     lambda d: ["infer", tiny_export(d, lambda h: h["arch"]["network"].update(layers=1) or h["input"].update(image_size=1)),
                gray_png(d, "i.png", 28)], "1×1 inputs are too small"),
    ("infer a truncated PNG", lambda d: ["infer", tiny_export(d), str(truncated_png(d))], "t.png: unreadable image"),
    ("infer an empty PNG", lambda d: ["infer", tiny_export(d), empty_file(d, "e.png")], "e.png: unreadable image"),
    ("infer a folder with one huge PNG", lambda d: (gray_png(d / "imgs", "a.png", 28), png_header(d, "imgs/b.png", 60000, 60000))
     and ["infer", tiny_export(d), "imgs"], "b.png: the image declares 3,600,000,000 pixels"),
    # issue 15: argparse errors of the newer commands
    ("eval without --data", lambda d: ["eval", "m.bitnas"], "eval: the following arguments are required: --data"),
    ("infer without images", lambda d: ["infer", "m.bitnas"], "infer: the following arguments are required: IMAGE|DIR"),
    ("train --force=yes", lambda d: T + ["--force=yes"], "ignored explicit argument 'yes'"),
    ("infer --topk 0", lambda d: ["infer", "m.bitnas", "x.png", "--topk", "0"], "infer: argument --topk"),
    ("infer --threads 0", lambda d: ["infer", "m.bitnas", "x.png", "--threads", "0"], "infer: argument --threads"),
    ("infer --engine nonsense", lambda d: ["infer", "m.bitnas", "x.png", "--engine", "nonsense"],
     "infer: argument --engine: invalid choice: 'nonsense'"),
    ("eval --engine nonsense", lambda d: ["eval", "m.bitnas", "--data", "x", "--engine", "nonsense"],
     "eval: argument --engine"),
    ("eval --batch-size abc", lambda d: ["eval", "m.bitnas", "--data", "x", "--batch-size", "abc"],
     "eval: argument --batch-size: invalid int value"),
    ("export without a checkpoint", lambda d: ["export"], "export: the following arguments are required"),
    ("study without a spec", lambda d: ["study"], "study: the following arguments are required: STUDY"),
    ("summary --style nonsense", lambda d: ["summary", "--style", "nonsense"], "summary: argument --style"),
    ("unknown command", lambda d: ["serch"], "argument COMMAND: invalid choice: 'serch'"),
    ("unknown option", lambda d: ["infer", "m.bitnas", "x.png", "--bogus"], "infer: unrecognized arguments: --bogus (see `bitnas infer --help`)"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_state):
    """A fresh working directory; bitnas logging and torch threads restored afterwards."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    process_state.detach()
    return d


def snapshot(d: Path) -> dict[str, str]:
    """Every file and folder under d with a digest of its contents."""
    out = {}
    for p in sorted(d.rglob("*")):
        out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("make_argv,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_leaving_nothing(workdir: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          make_argv: Callable[[Path], list[str]], needle: str) -> None:
    argv = make_argv(workdir)
    while _HIDDEN:
        monkeypatch.setitem(sys.modules, _HIDDEN.pop(), None)
    before = snapshot(workdir)
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip("\n").splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("bitnas: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert snapshot(workdir) == before
    assert not (workdir / "pwned").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_in_a_read_only_directory(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    ro = workdir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(opt(S, "--out", "ro/run")) == 2
        assert "cannot create a run directory in ro" in capsys.readouterr().err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(
        workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while epoch 2's last.pt is written: one error line, exit 2, epoch 1's last.pt intact."""
    real, writes = os.fsync, []

    def fsync(fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".last.pt."):
            writes.append(name)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc = main(opt(T, "--epochs", "2"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(writes) == 2
    assert err[-1] == ("bitnas: error: out/last.pt: cannot write (No space left on device); "
                       "the previous last.pt is unchanged"), err
    monkeypatch.undo()
    ck = load_checkpoint(workdir / "out" / "last.pt")
    assert ck["epoch"] == 1 and load_checkpoint(workdir / "out" / "best.pt")["epoch"] >= 1
    assert not list((workdir / "out").glob(".*.tmp"))


def test_a_loss_that_turns_non_finite_stops_the_run_in_one_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """lr=1e30 is a finite number, but the first steps blow the weights up: the run stops at the first
    non-finite loss with exit code 2, and no JSON file it wrote holds NaN or Infinity."""
    rc = main(opt(T, "--epochs", "2") + ["lr=1e30", "optimizer=sgd", "grad_clip=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("bitnas: error: epoch 1 step ") and "the loss is nan" in err[-1], err
    for f in (workdir / "out").rglob("*.json*"):
        text = f.read_text()
        assert "NaN" not in text and "Infinity" not in text, f


def test_a_ray_address_that_never_answers_is_refused_within_the_timeout(tmp_path: Path) -> None:
    """A port that accepts connections but never speaks Ray: ray.init alone retries for minutes; the
    study waits $BITNAS_RAY_TIMEOUT seconds, prints one line and leaves no folder (own process:
    the abandoned connection attempt must not outlive the test)."""
    import socket
    import subprocess
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        study_file(tmp_path, executor="ray", ray_address=f"127.0.0.1:{silent.getsockname()[1]}")
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "bitnas", *STUDY], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "BITNAS_RAY_TIMEOUT": "3"}, timeout=120)
        took = time.monotonic() - t0
    finally:
        silent.close()
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith("bitnas: error: ray_address: no Ray cluster answered at 127.0.0.1:") and "within 3 s" \
        in lines[0], lines
    assert not (tmp_path / "st").exists() and took < 90
