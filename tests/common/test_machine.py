"""The machine a result names: plain values that JSON and a weights_only checkpoint load both take."""
from __future__ import annotations

import io
import json

import torch

from bitnas.common.machine import cpu_model, machine_info


def test_machine_info_is_plain_data() -> None:
    info = machine_info()
    assert info["cpu"] == cpu_model() and info["cores"] >= 1 and info["torch"] == torch.__version__
    assert json.loads(json.dumps(info)) == info
    buf = io.BytesIO()
    torch.save({"machine": info}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["machine"] == info  # a TorchVersion would be refused here
