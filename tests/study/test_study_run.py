"""A tiny study end to end: report files, a killed study rerun to the same records, SIGTERM, Ray."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bitnas.cli import main
from bitnas.study.records import WALL_CLOCK
from bitnas.study.runner import run_study
from bitnas.study.spec import parse_spec
from bitnas.common.files import read_jsonl

pytestmark = pytest.mark.slow  # minutes: `make test-quick` leaves it out

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "name": "tiny", "data": "fashion-mnist-embedded", "seeds": [0], "workers": 2,
    "search": {"train_subset": 40, "init_channels": 4, "layers": 2, "batch_size": 20},
    "protocol": {"init_channels": 2, "layers": 2, "epochs": 2, "train_subset": 40, "test_subset": 20,
                 "batch_size": 20, "structure": "bireal"},
    "arms": [{"name": "random", "strategy": "random", "search": {"epochs": 1, "random_samples": 2}},
             {"name": "random_genotypes", "random_genotypes": 3},
             {"name": "bireal", "network": "bireal"}],
    "fidelity": {"genotypes": "random_genotypes", "estimators": ["random"], "bootstrap": 20},
}


def _records(out: Path) -> list[dict]:
    """trials.jsonl without the wall-clock fields (the only ones a rerun may change)."""
    lines = (out / "trials.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in WALL_CLOCK} for ln in lines]


def _study(tmp: Path, **kw) -> Path:
    p = tmp / "tiny.yaml"
    p.write_text(yaml.safe_dump({**TINY, **kw}))
    return p


def _start(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bitnas", "study", str(spec), "--out", str(out), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ref")
    out = tmp / "study"
    p = _start(_study(tmp), out)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return out


def test_report_files_and_records(reference: Path) -> None:
    for name in ("trials.jsonl", "table.md", "report.json", "study.yaml", "plots/accuracy_vs_ops.png",
                 "plots/rank_fidelity.png"):
        assert (reference / name).is_file(), name
    recs = _records(reference)
    ids = [r["id"] for r in recs]
    assert ids == ["random/s0/search", "random/s0/train", "random_genotypes/g00/train", "random_genotypes/g01/train",
                   "random_genotypes/g02/train", "bireal/s0/train", "fidelity/random/s0/score"]
    for r in recs:
        for key in ("arm", "seed", "kind", "split", "test_top1", "val_top1", "ops", "params_1bit", "search_seconds"):
            assert key in json.loads((reference / "trials.jsonl").read_text().splitlines()[ids.index(r["id"])]), key
    train = [r for r in recs if r["kind"] == "train"]
    assert all(0 <= r["test_top1"] <= 100 and r["ops"] > 0 and r["params_1bit"] > 0 for r in train)
    assert all(r["split"]["test"] == 20 and r["split"]["val"] == 4 for r in train)
    # each training's figures are those of its own run folder (the record is not made up)
    res = json.loads((reference / "trials/bireal/s0/train/result.json").read_text())
    assert recs[5]["test_top1"] == res["test_top1"] and recs[5]["network"] == "bireal"
    search = json.loads((reference / "trials/random/s0/search/genotype.json").read_text())
    assert recs[1]["genotype"] == search["genotype"] and recs[1]["search_images"] == search["images_processed"]
    score = recs[6]
    assert [s["index"] for s in score["scores"]] == [0, 1, 2]
    table = (reference / "table.md").read_text()
    assert "| random_genotypes | random_genotypes | 3 |" in table and "Rank fidelity" in table
    # every search and training names the machine it ran on, and the table counts them
    from bitnas.common.machine import cpu_model

    ran = [r for r in recs if r["kind"] in ("search", "train")]
    assert {r["machine"]["cpu"] for r in ran} == {cpu_model()} and "machine" not in recs[6]
    assert f"Machines: {cpu_model()} ({len(ran)} trials)" in table


def test_fidelity_run_keeps_the_other_trials_records(tmp_path: Path, reference: Path, process_state) -> None:
    """`--fidelity` on a study folder runs only the fidelity trials but rewrites trials.jsonl with
    every record it found (here: nothing left to run, so the file must come back unchanged; called
    in this process, as no trial process starts)."""
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    before = (out / "trials.jsonl").read_text()
    assert main(["study", str(_study(tmp_path)), "--out", str(out), "--fidelity"]) == 0
    assert (out / "trials.jsonl").read_text() == before and len(before.splitlines()) == 7


def read_records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path)}


def _wait_mid_trial(out: Path, p: subprocess.Popen, timeout: float = 300) -> None:
    """Until some trial has a checkpoint but no record yet (the study is mid-trial)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert p.poll() is None, p.communicate()[1][-2000:]
        done = set(read_records(out / "trials.jsonl"))
        started = {str(c.parent.relative_to(out / "trials")) for c in (out / "trials").rglob("last.pt")} \
            if (out / "trials").is_dir() else set()
        if started - done and len(done) >= 1:
            return
        time.sleep(0.05)
    raise AssertionError("the study never reached a trial in progress")


def test_interrupted_study_reruns_to_the_same_records(tmp_path: Path, reference: Path) -> None:
    """SIGTERM: running trials checkpoint, exit 143. SIGKILL: no trial outlives the study. Each rerun
    of the same command continues; the end result equals an uninterrupted study's."""
    out = tmp_path / "study"
    spec = _study(tmp_path)
    p = _start(spec, out)
    _wait_mid_trial(out, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err[-2000:]
    assert "rerun the same command to resume" in err.strip().splitlines()[-1]
    done = read_records(out / "trials.jsonl")
    table = (out / "table.md").read_text()  # a stopped study reports what it finished
    trained = sum(1 for r in done.values() if r["kind"] == "train")
    assert f"**Incomplete**: {trained} of 5 trainings finished" in table, table
    p = _start(spec, out)
    _wait_mid_trial(out, p)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    time.sleep(1.0)
    orphans = subprocess.run(["pgrep", "-f", f"{out}"], capture_output=True, text=True).stdout.split()
    assert not orphans, "trial processes outlived the killed study"
    assert len(read_records(out / "trials.jsonl")) < 7
    p = _start(spec, out)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert _records(out) == _records(reference)


def _refusal(capsys: pytest.CaptureFixture[str], spec: Path, out: Path, *extra: str) -> list[str]:
    """`bitnas study SPEC --out OUT EXTRA` called in this process, which must refuse it (exit 2):
    its stderr lines. (A refusal comes before any trial starts: no process boundary to test.)"""
    assert main(["study", str(spec), "--out", str(out), *extra]) == 2
    return capsys.readouterr().err.strip().splitlines()


def test_changed_spec_is_refused(tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str],
                                 process_state) -> None:
    process_state.detach()
    before = (reference / "trials.jsonl").read_text()
    err = _refusal(capsys, _study(tmp_path, seeds=[1]), reference)
    assert len(err) == 1 and "holds a study with other settings (seeds" in err[0]
    arms = [dict(TINY["arms"][0]), *TINY["arms"][1:]]
    arms[0]["search"] = {"epochs": 1, "random_samples": 3}
    err = _refusal(capsys, _study(tmp_path, arms=arms), reference)
    assert len(err) == 1 and "(arm random differ)" in err[0]
    assert (reference / "trials.jsonl").read_text() == before


def test_ray_executor_gives_the_same_records(tmp_path: Path, reference: Path) -> None:
    """A local Ray instance started here runs a one-arm study; its record equals the local one."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        spec = parse_spec({**TINY, "executor": "ray", "arms": [TINY["arms"][2]], "fidelity": None})
        out = tmp_path / "study"
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            run_study(spec, out)
        finally:
            os.chdir(cwd)
    finally:
        ray.shutdown()
    assert _records(out) == [r for r in _records(reference) if r["arm"] == "bireal"]


def _figures(rec: dict) -> dict:
    """A training record's results (not its place in a study, not the wall clock)."""
    skip = {"id", "arm", "index", "config", "reused_from", *WALL_CLOCK}
    return {k: v for k, v in rec.items() if k not in skip}


def test_reuse_takes_the_very_same_trainings_of_another_study(tmp_path: Path, reference: Path) -> None:
    """--reuse: trainings the reference ran under the same settings are taken (their records name
    their origin), the others run; a taken record equals what running it here gives."""
    spec = _study(tmp_path, name="shared", seeds=[0, 1], fidelity=None, arms=[
        {"name": "rg", "random_genotypes": 2, "seeds": [0, 1]}, {"name": "bireal", "network": "bireal"}])
    out = tmp_path / "shared"
    p = _start(spec, out, "--reuse", str(reference))
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    got = read_records(out / "trials.jsonl")
    ref = read_records(reference / "trials.jsonl")
    origin = {i: r.get("reused_from") for i, r in got.items()}
    assert origin == {"rg/g00/s0/train": "study/random_genotypes/g00/train",
                      "rg/g00/s1/train": None,
                      "rg/g01/s0/train": "study/random_genotypes/g01/train",
                      "rg/g01/s1/train": None,
                      "bireal/s0/train": "study/bireal/s0/train",
                      "bireal/s1/train": None}
    assert _figures(got["rg/g01/s0/train"]) == _figures(ref["random_genotypes/g01/train"])
    assert got["rg/g01/s0/train"]["config"] == ref["random_genotypes/g01/train"]["config"]  # as it ran there
    assert not (out / "trials/rg/g01/s0").exists()  # nothing ran for it
    assert (out / "trials/rg/g01/s1/train/result.json").is_file()
    assert "**Shared trainings**: 3 of the 6 trainings" in (out / "table.md").read_text()
    # the same training run here, without --reuse, gives the record that was taken
    alone = tmp_path / "alone"
    one = _study(tmp_path, name="alone", fidelity=None, arms=[{"name": "rg", "random_genotypes": 2, "seeds": [0]}])
    p = _start(one, alone)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    ran = read_records(alone / "trials.jsonl")
    assert _figures(ran["rg/g01/s0/train"]) == _figures(got["rg/g01/s0/train"])
    assert _figures(ran["rg/g00/s0/train"]) == _figures(got["rg/g00/s0/train"])


def test_reuse_skips_trainings_under_other_settings(tmp_path: Path, reference: Path) -> None:
    from bitnas.study.reuse import shared_records

    for change in ({"protocol": {**TINY["protocol"], "lr": 0.01}}, {"data": "fashion-mnist"}, {"seeds": [1]}):
        spec = parse_spec({**TINY, **change}, "spec")
        assert shared_records(spec, spec.trials(), {}, [reference], tmp_path / "new") == {}, change
    spec = parse_spec(TINY, "spec")
    shared = shared_records(spec, spec.trials(), {}, [reference], tmp_path / "new")
    assert sorted(shared) == ["bireal/s0/train", "random_genotypes/g00/train", "random_genotypes/g01/train",
                              "random_genotypes/g02/train"]  # never a search arm's training


def test_reuse_of_a_folder_that_is_no_study_is_refused(tmp_path: Path, reference: Path,
                                                       capsys: pytest.CaptureFixture[str], process_state) -> None:
    process_state.detach()
    assert _refusal(capsys, _study(tmp_path), tmp_path / "new", "--reuse", str(tmp_path)) == [
        f"bitnas: error: --reuse {tmp_path}: not a study folder (no trials.jsonl)"]
    assert not (tmp_path / "new").exists()
