"""Exact resume: a run SIGKILLed during epoch 2 and resumed ends bitwise identical."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import torch

from bitnas.cli import main
from bitnas.common import faults
from bitnas.utils import load_checkpoint, read_jsonl

from train_helpers import TINY, TINY_KV, run_bitnas

# 64 images / batch 32 = 2 steps per epoch: step 3 is the first step of epoch 2. Augmentation,
# drop path and the centre-loss buffer (cp with the latent target, no parent) all take part.
ARGS = [*TINY, "--epochs", "2", "--train-subset", "64"]
KV = [*TINY_KV, "crop_padding=2", "hflip=true", "drop_path_prob=0.3", "method=cp", "cp_kernel_target=latent",
      "cp_lambda=0.5", "cp_mu=0.01", "eval_every=0", "val_fraction=0"]
TIMING = {"seconds", "train_seconds", "images_per_second"}


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigkill_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    p = run_bitnas(["train", *ARGS, "--out", str(killed), *KV], env={faults.ENV: json.dumps([{"at": "train.step", "index": 3, "do": "kill"}])})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1
    assert len(read_jsonl(killed / "metrics.jsonl")) == 1

    assert main(["train", *ARGS, "--out", str(killed), "--resume", *KV]) == 0
    assert main(["train", *ARGS, "--out", str(ref), *KV]) == 0

    a, b = load_checkpoint(killed / "last.pt"), load_checkpoint(ref / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    _same_state(a["model"], b["model"])
    _same_state(a["center_loss"], b["center_loss"])
    ra, rb = read_jsonl(killed / "metrics.jsonl"), read_jsonl(ref / "metrics.jsonl")
    assert [r.get("epoch") for r in ra] == [1, 2, None] and ra[-1]["final"]
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in (*ra, *rb)]
    assert strip[:3] == strip[3:]
