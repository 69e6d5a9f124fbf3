"""Small shared helpers: atomic writes, strict JSON lines, sealed checkpoints, devices, seeding."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import math
import os
import random
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitnas.errors import BitnasError, ConfigError

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


# A checkpoint is the zip file torch.save writes, with the SHA-256 of those bytes in the zip comment:
# torch.load (and any zip reader) still reads it, and every byte of it is covered.
DIGEST_TAG = b"bitnas-sha256:"
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes + comment


def _eocd_at(data: bytes, comment_length: int) -> int | None:
    """Where the end-of-central-directory record sits if it is followed by exactly `comment_length` bytes."""
    i = len(data) - 22 - comment_length
    if i >= 0 and data[i:i + 4] == _EOCD and struct.unpack_from("<H", data, i + 20)[0] == comment_length:
        return i
    return None


def seal(zipped: bytes) -> bytes:
    """torch.save output with its SHA-256 appended as the zip comment."""
    i = _eocd_at(zipped, 0)
    if i is None:
        raise ValueError("not a zip file without a comment")
    tag = DIGEST_TAG + hashlib.sha256(zipped).hexdigest().encode()
    return zipped[:i + 20] + struct.pack("<H", len(tag)) + tag


def unseal(data: bytes, source: str | Path) -> bool:
    """True if `data` carries a digest and it matches; False for files written without one (older
    bitnas, other tools); BitnasError when the digest or the bytes it covers were altered."""
    n = len(DIGEST_TAG) + 64
    i = _eocd_at(data, n)
    if i is None and DIGEST_TAG not in data[-2 * n:]:
        return False
    if i is None or not data[-n:].startswith(DIGEST_TAG):
        raise BitnasError(f"{source}: corrupt checkpoint: its SHA-256 record is damaged")
    if hashlib.sha256(data[:i + 20] + b"\0\0").hexdigest().encode() != data[-64:]:
        raise BitnasError(f"{source}: corrupt checkpoint: its bytes no longer match the SHA-256 stored when it was "
                          "written (the file changed on disk)")
    return True


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save, sealed with the SHA-256 of its bytes, written atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, seal(buf.getvalue()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify the SHA-256 (files written before checkpoints carried one load unverified), then load with
    weights_only=True: a checkpoint can never run code."""
    path = Path(path)
    if not path.is_file():
        raise BitnasError(f"{path}: checkpoint not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BitnasError(f"{path}: cannot read ({os_reason(e)})") from None
    if not data:
        raise BitnasError(f"{path}: empty file (0 bytes), not a bitnas checkpoint")
    unseal(data, path)
    try:
        ck = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise BitnasError(f"{path}: not a bitnas checkpoint ({type(e).__name__}{': ' + first if first else ''})") from None
    if not isinstance(ck, dict):
        raise BitnasError(f"{path}: not a bitnas checkpoint (it holds a {type(ck).__name__}, not a dict)")
    return ck


def resolve_device(name: str) -> torch.device:
    """auto → cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"--device '{name}': expected auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a run touches, for exact resume."""
    st = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_tensors(np.random.get_state()),
        "python": _py_state_to_tensors(random.getstate()),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(_tensors_to_np_state(st["numpy"]))
    random.setstate(_tensors_to_py_state(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _np_state_to_tensors(s: tuple) -> dict[str, Any]:
    return {"keys": torch.from_numpy(s[1].astype(np.int64)), "pos": int(s[2]), "has_gauss": int(s[3]), "gauss": float(s[4])}


def _tensors_to_np_state(d: dict[str, Any]) -> tuple:
    return ("MT19937", d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])


def _py_state_to_tensors(s: tuple) -> dict[str, Any]:
    return {"version": s[0], "state": torch.tensor(s[1], dtype=torch.int64), "gauss": s[2]}


def _tensors_to_py_state(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(v) for v in d["state"].tolist()), d["gauss"])


def progress_enabled() -> bool:
    """tqdm only on a terminal and never in CI."""
    import sys

    return sys.stderr.isatty() and not os.environ.get("CI")
