"""Files that survive crashes and bad bytes: atomic writes (temp file, fsync, rename, directory
fsync), JSON without NaN, strict JSON lines with one rule for bad lines."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitnas.errors import BitnasError


log = logging.getLogger("bitnas")


TEMP_SUFFIX = ".tmp"


def os_reason(e: OSError) -> str:
    """'No space left on device' and the like: the part of an OSError a user can act on."""
    return e.strerror or str(e) or type(e).__name__


def fsync_dir(directory: str | Path) -> None:
    """Flush a directory entry (a rename into it) to disk; a no-op where directories cannot be synced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync it, rename, fsync the directory.

    A crash at any point leaves either the old file or the new one, never a mix; a failed write
    (a full disk, a read-only directory) raises BitnasError and leaves the old file untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise BitnasError(f"{path}: cannot write ({os_reason(e)})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
            raise BitnasError(f"{path}: cannot write ({os_reason(e)}){kept}") from None
        raise
    fsync_dir(path.parent)


def remove_orphan_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files of atomic writes a killed process left in `directory`; returns them."""
    removed = []
    for p in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON: NaN and ±Infinity (not JSON) become null; numpy scalars, tensors, paths, tuples convert."""
    return json.dumps(finite(obj), indent=indent, default=_json_default, allow_nan=False)


def finite(o: Any) -> Any:
    """`o` with every non-finite float (and numpy float) replaced by None, recursively."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    if isinstance(o, np.floating):
        return finite(float(o))
    if isinstance(o, torch.Tensor):
        return finite(o.tolist())
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    """The value of a JSON file, or a BitnasError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BitnasError(f"{path}: cannot read ({os_reason(e)})") from None
    except UnicodeDecodeError:
        raise BitnasError(f"{path}: not a text file (not UTF-8)") from None
    except json.JSONDecodeError as e:
        raise BitnasError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """`read_json` of a file that must hold a JSON object."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise BitnasError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON object per line (flushed, so a killed run keeps what it logged)."""
    try:
        with open(path, "a") as f:
            f.write(to_json(record) + "\n")
            f.flush()
    except OSError as e:
        raise BitnasError(f"{path}: cannot append ({os_reason(e)})") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] if absent), by the rule of `jsonl_records`."""
    return [rec for _, rec in jsonl_records(path)]


def jsonl_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSON-lines file ([] if absent): the one rule for every JSON-lines
    file bitnas reads back. A torn last line (a process killed while appending) is dropped with a
    warning; any other line that is not a JSON object is an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise BitnasError(f"{path}: cannot read ({os_reason(e)})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            if n == len(lines):
                log.warning("%s: ignoring its torn last line %d (a run killed while writing it)", path, n)
                break
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise BitnasError(f"{path}: line {n} is not a JSON record ({reason})") from None
        if not isinstance(rec, dict):
            raise BitnasError(f"{path}: line {n} is not a JSON object")
        out.append((n, rec))
    return out


def truncate_jsonl(path: str | Path, keep: int) -> None:
    """Keep the first `keep` records (used on resume to drop lines of a lost epoch)."""
    recs = read_jsonl(path)[:keep]
    atomic_write_text(path, "".join(to_json(r) + "\n" for r in recs))
