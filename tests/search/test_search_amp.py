"""Searches under `amp=bf16` (the weight steps' forward and loss under autocast) and the device-side `Meter`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bitnas.cli import main
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.files import read_jsonl
from bitnas.search.steps import Meter

ARGS = ["search", "--strategy", "pcdarts", "--data", "fashion-mnist-embedded", "--train-subset", "64",
        "--batch-size", "8", "--epochs", "1", "--init-channels", "4", "--layers", "2", "warmup_epochs=0",
        "progress=off", "threads=1"]


def test_a_bf16_search_runs_with_float32_weights_and_alpha(tmp_path: Path) -> None:
    for amp in ("none", "bf16"):
        assert main([*ARGS, "--out", str(tmp_path / amp), f"amp={amp}"]) == 0
    ref, bf16 = (read_jsonl(tmp_path / amp / "metrics.jsonl")[0] for amp in ("none", "bf16"))
    assert ref["train_loss"] != bf16["train_loss"]  # autocast changed the weight steps' arithmetic
    assert abs(ref["train_loss"] - bf16["train_loss"]) < 0.1 * ref["train_loss"]
    model = load_checkpoint(tmp_path / "bf16" / "last.pt")["strategy"]["model"]
    assert all(t.dtype in (torch.float32, torch.int64) for t in model.values())
    assert json.loads((tmp_path / "bf16" / "genotype.json").read_text())["genotype"]


def test_fp16_is_refused_for_searches_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*ARGS, "--out", str(tmp_path / "o"), "amp=fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bitnas: error: ") and "amp" in err[0] and "fp16" in err[0], err
    assert not (tmp_path / "o").exists()


def test_meter_sums_are_the_host_sums_across_a_checkpoint() -> None:
    """Device sums read by state_dict/result equal float64 host sums in the same order, and a Meter rebuilt
    from a mid-epoch state_dict goes on exactly as the one that was not interrupted."""
    torch.manual_seed(0)
    batches = [(torch.randn(b, 4), torch.randint(0, 4, (b,))) for b in (5, 8, 3, 6)]
    whole, host_loss, host_correct = Meter(), 0.0, 0.0
    for logits, y in batches:
        loss = F.cross_entropy(logits, y)
        whole.add(loss, logits, y)
        host_loss += float(loss) * y.shape[0]
        host_correct += float(sum(int(logits[i].argmax() == y[i]) for i in range(y.shape[0])))
    first = Meter()
    for logits, y in batches[:2]:
        first.add(F.cross_entropy(logits, y), logits, y)
    resumed = Meter.from_state(first.state_dict())
    for logits, y in batches[2:]:
        resumed.add(F.cross_entropy(logits, y), logits, y)
    assert whole.state_dict() == {"loss": host_loss, "correct": host_correct, "n": 22.0} == resumed.state_dict()
