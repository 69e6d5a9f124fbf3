"""Runs that fail halfway: training, a PC-DARTS search and a CP-NAS search are stopped by a signal at
a step (SIGINT/SIGTERM: exit 130/143 with a resumable checkpoint of the partial epoch or unit),
then SIGKILLed at a random moment (anywhere: inside a step, a metrics append, a checkpoint
write), then resumed to the end; every result is bitwise the one of an uninterrupted run, and no
temp file of a killed write survives.

The kill moments are drawn from a seed printed with every failure; set BITNAS_TEST_KILL_SEED to
replay one.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from bitnas.cli import main
from bitnas.common import faults
from bitnas.search.cpnas import unpack_tensors
from bitnas.space.spaces import SPACES
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl

pytestmark = pytest.mark.slow  # minutes: `make test-quick` leaves it out

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("BITNAS_TEST_KILL_SEED") or secrets.randbits(32))
TIMING = {"seconds", "train_seconds", "images_per_second", "elapsed", "step_seconds", "search_seconds"}

TRAIN = ["train", "--genotype", "DARTS_V2", "--data", "fashion-mnist-embedded", "--init-channels", "4", "--layers", "2",
         "--batch-size", "16", "--epochs", "2", "--train-subset", "64", "progress=off", "test_subset=50", "threads=1",
         "crop_padding=2", "hflip=true", "drop_path_prob=0.3", "method=cp", "cp_kernel_target=latent", "cp_lambda=0.5",
         "cp_mu=0.01"]
PCDARTS = ["search", "--strategy", "pcdarts", "--data", "fashion-mnist-embedded", "--train-subset", "64",
           "--batch-size", "16", "--init-channels", "4", "--layers", "1", "--epochs", "2", "warmup_epochs=0",
           "progress=off", "threads=1"]
# PC-DARTS with the collapse remedies on: the cap and an annealed α temperature (T depends on the
# step counter). It runs every step, checkpoint and resume path of a plain PC-DARTS search (a
# constant T = 1 is the schedule's special case) and the step-dependent state besides, so it is the
# one PC-DARTS case; tests/search/test_collapse.py resumes the same remedies in-process.
PCDARTS_REMEDIES = PCDARTS + ["max_param_free_ops=1", "alpha_temperature=2.0", "alpha_temperature_end=0.25"]
# CP-NAS over a 4-op space (registered by LAUNCH): 4 + 3 + 2 samples and 3 removals; 2 steps per sample
# so a stop can fall inside a sample.
CPNAS = ["search", "--strategy", "cpnas", "--space", "cpnas_test4", "--data", "fashion-mnist-embedded",
         "--train-subset", "48", "--batch-size", "8", "--init-channels", "2", "--layers", "1", "--rounds", "1",
         "--sample-steps", "2", "val_subset=16", "cp_eval_batch=16", "progress=off", "threads=1"]
TINY_OPS = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3")
LAUNCH = (f"import sys\nfrom bitnas.space.spaces import SPACES\n"
          f"SPACES.register('cpnas_test4', SPACES.get('cpnas').with_ops({TINY_OPS!r}, name='cpnas_test4'))\n"
          "from bitnas.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def strip(o: object) -> object:
    """`o` without its wall-clock figures, at any depth."""
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k not in TIMING}
    if isinstance(o, list):
        return [strip(v) for v in o]
    return o


def same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def compare_train(ref: Path, run: Path) -> None:
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(ref / name), load_checkpoint(run / name)
        assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"], name
        same_tensors(a["model"], b["model"], name)
        same_tensors(a["center_loss"], b["center_loss"], f"{name} centre loss")
        same_tensors(a["optimizer"]["state"][0], b["optimizer"]["state"][0], f"{name} optimizer")
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (ref, run))
    for key in ("test_top1", "test_loss", "val_top1", "selected_epoch", "best_metric", "splits"):
        assert ra[key] == rb[key], key


def compare_search(ref: Path, run: Path) -> None:
    ga, gb = (json.loads((d / "genotype.json").read_text()) for d in (ref, run))
    assert strip(ga) == strip(gb)
    sa, sb = (load_checkpoint(d / "last.pt")["strategy"] for d in (ref, run))
    if "history_file" in ga:  # CP-NAS: the removal history and its picture
        ha, hb = (json.loads((d / ga["history_file"]).read_text()) for d in (ref, run))
        assert strip(ha) == strip(hb) and len(hb["removals"]) == 3
        assert (run / "plots" / "cpnas_scores.png").is_file()
    if "weights" in sa:  # CP-NAS packs both supernets and their optimizers
        wa, wb = unpack_tensors(sa["weights"]), unpack_tensors(sb["weights"])
        for net in ("child", "parent"):
            same_tensors(wa["nets"][net], wb["nets"][net], net)
    else:
        same_tensors(sa["model"], sb["model"], "supernet")


# name: (command line, fault rule that stops run 1 with a signal, its exit code, checks of that checkpoint, compare)
CASES: dict[str, tuple[list[str], dict, int, Callable[[dict], None], Callable[[Path, Path], None]]] = {
    "train": (TRAIN, {"at": "train.step", "index": 2, "do": "signal", "signal": "SIGINT"}, 130,
              lambda ck: ck["partial"] is not None and ck["epoch"] == 0 and ck["global_step"] == 2, compare_train),
    "pcdarts_remedies": (PCDARTS_REMEDIES, {"at": "search.step", "index": 3, "do": "signal", "signal": "SIGTERM"}, 143,
                         lambda ck: ck["strategy"]["partial"] is not None and ck["records"] == 1, compare_search),
    "cpnas": (CPNAS, {"at": "search.step", "index": 3, "do": "signal", "signal": "SIGTERM"}, 143,
              lambda ck: ck["strategy"]["partial"]["done"] == 1 and ck["records"] == 1, compare_search),
}


def start(argv: list[str], out: Path, rules: list[dict], log: Path) -> subprocess.Popen:
    """`bitnas ARGV --out OUT` in a fresh single-threaded process with fault `rules`, stderr to `log`."""
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    env.update({faults.ENV: json.dumps(rules)}, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-c", LAUNCH, *argv[:1], "--out", str(out), *argv[1:]]
    with open(log, "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)


def wait_for(p: subprocess.Popen, log: Path, text: str, timeout: float = 300) -> bool:
    """Poll until `text` appears in the log (True) or the process ends (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in log.read_text(errors="replace"):
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError(f"{log}: no '{text}' within {timeout} s")


def run_in_process(argv: list[str], out: Path, trace: Path) -> float:
    """The uninterrupted reference run (in this process: no second interpreter start); its seconds."""
    saved, threads = os.environ.get(faults.ENV), torch.get_num_threads()
    os.environ[faults.ENV] = json.dumps([trace_rule(trace)])
    t0 = time.perf_counter()
    try:
        assert main([*argv[:1], "--out", str(out), *argv[1:]]) == 0
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop(faults.ENV)
        else:
            os.environ[faults.ENV] = saved
    return time.perf_counter() - t0


def trace_rule(d: Path) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    return {"at": "search.arch_step", "do": "trace", "dir": str(d)}


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, process_state) -> None:
    """The tiny CP-NAS space registered here too; bitnas logging restored afterwards."""
    monkeypatch.setitem(SPACES._items, "cpnas_test4", SPACES.get("cpnas").with_ops(TINY_OPS, name="cpnas_test4"))


@pytest.mark.parametrize("name", list(CASES))
def test_signal_then_random_sigkill_then_resume_is_bitwise_identical(tmp_path: Path, name: str, in_process) -> None:
    argv, stop_rule, stop_code, check_stop, compare = CASES[name]
    rng = random.Random(f"{SEED}-{name}")
    ref, run, log = tmp_path / "ref", tmp_path / "run", tmp_path / "log"
    trace = trace_rule(tmp_path / "run.trace")
    where = f"(BITNAS_TEST_KILL_SEED={SEED})"

    # 1. a signal at a step: the partial epoch/unit is checkpointed, exit 128 + signal (meanwhile the
    #    uninterrupted reference runs here)
    p = start(argv, run, [trace, stop_rule], log)
    seconds = run_in_process(argv, ref, tmp_path / "ref.trace")
    assert p.wait(timeout=600) == stop_code, log.read_text()[-3000:]
    assert f"stopped by {stop_rule['signal']}" in log.read_text().splitlines()[-1]
    stopped = load_checkpoint(run / "last.pt")
    assert check_stop(stopped)

    # 2. resumed, then SIGKILLed at a random moment of what is left
    p = start([*argv, "--resume"], run, [trace], log)
    delay = rng.uniform(0.0, seconds)
    if wait_for(p, log, "resumed"):
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
    code = p.wait(timeout=600)
    assert code in (-signal.SIGKILL, 0), f"{where} {log.read_text()[-3000:]}"

    # 3. resumed to the end
    p = start([*argv, "--resume"], run, [trace], log)
    assert p.wait(timeout=600) == 0, f"{where} killed {delay:.2f} s in: {log.read_text()[-3000:]}"
    compare(ref, run)
    assert strip(read_jsonl(ref / "metrics.jsonl")) == strip(read_jsonl(run / "metrics.jsonl")), where
    if name.startswith("pcdarts"):  # α after every step, including the steps redone after each interruption
        assert faults.read_trace(tmp_path / "ref.trace" / "trace_rank0.jsonl") == \
            faults.read_trace(tmp_path / "run.trace" / "trace_rank0.jsonl"), where
    assert not list(run.rglob("*.tmp")), where
    if name == "train":  # the reported cost counts the interrupted processes too
        assert json.loads((run / "result.json").read_text())["seconds"] >= stopped["elapsed"] > 0, where
