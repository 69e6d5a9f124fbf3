"""What machine a run ran on: CPU model, usable cores, torch and oneDNN's ISA cap.

Results of a study come from several sessions, possibly on several CPUs (oneDNN picks other
kernels on each, so the same training differs in its last digits); each result names its machine.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_info() -> dict[str, Any]:
    """The machine of a result: CPU model, usable cores, torch version, oneDNN ISA cap if set."""
    import torch

    # str(): torch.__version__ is a TorchVersion, which a weights_only checkpoint load refuses
    return {"cpu": cpu_model(), "cores": usable_cores(), "torch": str(torch.__version__),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or None}
