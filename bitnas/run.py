"""The run directory: resolved config, metrics.jsonl, log, checkpoints, plots. Rank 0 writes."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from bitnas.config import to_yaml
from bitnas.utils import append_jsonl, atomic_write_json, atomic_write_text

log = logging.getLogger("bitnas")


def default_out(command: str) -> str:
    return f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """Owns one run's directory. `writer=False` (non-zero ranks) makes every write a no-op."""

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "plots").mkdir(exist_ok=True)
            self._attach_log_file()

    def _attach_log_file(self) -> None:
        target = str((self.path / "run.log").resolve())
        for h in log.handlers:
            if isinstance(h, logging.FileHandler) and h.baseFilename == target:
                return
        fh = logging.FileHandler(target)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)

    def file(self, name: str) -> Path:
        return self.path / name

    def save_config(self, cfg: Any, extra: dict[str, Any] | None = None) -> None:
        if self.writer:
            text = to_yaml(cfg)
            if extra:
                import yaml

                text += yaml.safe_dump(extra, sort_keys=False)
            atomic_write_text(self.path / "config.yaml", text)

    def log_metrics(self, record: dict[str, Any]) -> None:
        if self.writer:
            append_jsonl(self.path / "metrics.jsonl", record)

    def write_json(self, name: str, obj: Any) -> None:
        if self.writer:
            atomic_write_json(self.path / name, obj)


def setup_logging(verbose: bool = False) -> None:
    """Human-readable log lines on stderr."""
    if any(getattr(h, "_bitnas", False) for h in log.handlers):
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(message)s"))
    h._bitnas = True  # type: ignore[attr-defined]
    log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
