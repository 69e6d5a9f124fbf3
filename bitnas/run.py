"""The run directory: resolved config, metrics.jsonl, log, checkpoints, plots. Rank 0 writes."""
from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bitnas.common.safe_yaml import read_yaml
from bitnas.config import to_yaml
from bitnas.errors import BitnasError, ConfigError
from bitnas.common.files import append_jsonl, atomic_write_json, atomic_write_text, os_reason, remove_orphan_temps

log = logging.getLogger("bitnas")


def default_out(command: str) -> str:
    return f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"


# Files a run of any command writes at the top of its directory.
RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "parent.pt", "result.json", "genotype.json",
             "cpnas_history.json", "demo.json")


def run_kind(path: str | Path) -> str | None:
    """The command whose run `path` holds ("search", "train", "demo", or "run" when unclear), or None
    when `path` holds no run files."""
    p = Path(path)
    if not p.is_dir():
        return None
    found = [n for n in RUN_FILES if (p / n).exists()]
    if not found:
        return None
    cfg = p / "config.yaml"
    if cfg.is_file():
        try:
            data = read_yaml(cfg)
        except ConfigError:  # an unreadable config only makes the kind unknown
            data = None
        if isinstance(data, dict) and data.get("command") in ("search", "train", "demo"):
            return str(data["command"])
    for name, kind in (("demo.json", "demo"), ("genotype.json", "search"), ("result.json", "train"),
                       ("best.pt", "train")):
        if name in found:
            return kind
    return "run"


def check_out(path: str | Path, command: str, resume: bool, force: bool) -> None:
    """Refuse an --out that cannot take this run, before anything is created: a file, a place where no
    directory can be made, another command's run, or an earlier run without --resume or --force."""
    p = Path(path)
    where = f"--out {path}"
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{where}: exists and is not a directory")
    check_creatable(p, where)
    kind = run_kind(p)
    if kind is None:
        return
    if resume and kind not in (command, "run"):
        raise ConfigError(f"{where}: holds a {kind} run, not a {command}; --resume continues a {command} in its "
                          "own directory")
    if not resume and not force:
        raise ConfigError(f"{where}: holds an earlier {kind} run; use "
                          + ("--resume to continue it, " if kind in (command, "run") else "")
                          + "--force to replace it, or another --out")


def check_creatable(p: Path, where: str) -> None:
    """A directory can be made at (or exists writable at) `p`: probed with a temp directory in the
    nearest existing ancestor, removed at once."""
    base = p
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{where}: {base} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".bitnas-probe-", dir=base)
    except OSError as e:
        raise ConfigError(f"{where}: cannot create a run directory in {base} ({os_reason(e)})") from None
    with contextlib.suppress(OSError):
        Path(probe).rmdir()


def clear_run(path: str | Path, keep: str | Path = "") -> list[str]:
    """Delete the files an earlier run left in `path` (except `keep`), its parent/ sub-run and plots;
    returns what was deleted. Other files are left alone."""
    p = Path(path)
    kept = Path(keep).resolve() if keep else None
    gone = []
    for name in RUN_FILES + ("run.log",):
        f = p / name
        if f.exists() and f.resolve() != kept:
            f.unlink()
            gone.append(name)
    sub = p / "parent"
    if sub.is_dir() and not (kept and sub.resolve() in kept.parents):
        shutil.rmtree(sub)
        gone.append("parent/")
    plots = p / "plots"
    if plots.is_dir():
        for png in plots.glob("*.png"):
            png.unlink()
    return gone


class RunDir:
    """Owns one run's directory. `writer=False` (non-zero ranks) makes every write a no-op.

    With `create=False` nothing touches the disk until `create()`: a run validates everything
    first, so refused input leaves no half-made directory behind."""

    def __init__(self, path: str | Path, writer: bool = True, create: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.created = False
        if create:
            self.create()

    def create(self) -> None:
        """Make the directory and plots/, drop temp files of a killed write, attach run.log."""
        if not self.writer or self.created:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "plots").mkdir(exist_ok=True)
        except OSError as e:
            raise BitnasError(f"{self.path}: cannot create the run directory ({os_reason(e)})") from None
        for tmp in remove_orphan_temps(self.path):
            log.debug("removed %s, left by a killed write", tmp)
        self.created = True
        self._attach_log_file()

    def _attach_log_file(self) -> None:
        target = str((self.path / "run.log").resolve())
        for h in log.handlers:
            if isinstance(h, logging.FileHandler) and h.baseFilename == target:
                return
        fh = logging.FileHandler(target)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)

    def detach_log_file(self) -> None:
        """Stop copying log lines into this run's run.log."""
        target = str((self.path / "run.log").resolve())
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler) and h.baseFilename == target:
                log.removeHandler(h)
                h.close()

    def file(self, name: str) -> Path:
        return self.path / name

    def save_config(self, cfg: Any, extra: dict[str, Any] | None = None, command: str = "") -> None:
        """config.yaml: `command: NAME` (as in recipes) and the resolved config, then `extra`."""
        if self.writer:
            text = yaml.safe_dump({"command": command}) if command else ""
            text += to_yaml(cfg)
            if extra:
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

