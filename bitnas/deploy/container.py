"""The `.bitnas` container: a JSON header and typed binary sections, sealed by a SHA-256.

Layout (little-endian):

    magic   8 bytes  b"BITNAS\\x00\\x1a"
    version u32      container version (1)
    hlen    u64      bytes of the UTF-8 JSON header
    plen    u64      bytes of the payload
    header  hlen     JSON object; "sections": {name: [dtype, offset, count]} describes the payload
    payload plen     the sections back to back, each 8-byte aligned
    sha256  32 bytes digest of everything before it

Reading never executes file content (json + numpy.frombuffer of known dtypes) and bounds every
size before allocating: the file size is checked against a limit and against the sizes the
prefix claims, the digest is verified before the header is parsed, and every section must lie
inside the payload. Writing is atomic (temp file + fsync + rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.errors import BitnasError
from bitnas.common.files import atomic_write_bytes

MAGIC = b"BITNAS\x00\x1a"
CONTAINER_VERSION = 1
_PREFIX = struct.Struct("<8sIQQ")
DIGEST_BYTES = 32
MAX_HEADER_BYTES = 16 << 20
MAX_HEADER_DEPTH = 32  # an export's header nests about 5 levels
MAX_FILE_BYTES = int(os.environ.get("BITNAS_MAX_EXPORT_BYTES", 1 << 30))
DTYPES = {"u1": np.dtype("<u1"), "f4": np.dtype("<f4"), "f8": np.dtype("<f8"), "i8": np.dtype("<i8")}


def is_container(path: str | Path) -> bool:
    """True when `path` is a regular file starting with the container magic."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def encode(header: dict[str, Any], sections: dict[str, np.ndarray]) -> bytes:
    """The container bytes of `header` (JSON-able) and `sections` (1-D arrays of DTYPES)."""
    table, chunks, offset = {}, [], 0
    for name, arr in sections.items():
        code = next((c for c, d in DTYPES.items() if np.dtype(arr.dtype).newbyteorder("<") == d), None)
        if code is None:
            raise ValueError(f"section {name}: dtype {arr.dtype} not storable")
        data = np.ascontiguousarray(arr.reshape(-1), dtype=DTYPES[code]).tobytes()
        table[name] = [code, offset, int(arr.size)]
        pad = (-len(data)) % 8
        chunks.append(data + b"\x00" * pad)
        offset += len(data) + pad
    head = json.dumps(dict(header, sections=table), separators=(",", ":"), allow_nan=False).encode()
    body = _PREFIX.pack(MAGIC, CONTAINER_VERSION, len(head), offset) + head + b"".join(chunks)
    return body + hashlib.sha256(body).digest()


def write(path: str | Path, header: dict[str, Any], sections: dict[str, np.ndarray]) -> int:
    """Write atomically; returns the number of bytes. OSError becomes a one-line BitnasError."""
    data = encode(header, sections)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise BitnasError(f"{path}: cannot write ({e.strerror or e})") from None
    return len(data)


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and sections of a container file, verified; BitnasError naming the problem otherwise."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise BitnasError(f"{p}: not a regular file")
        if size > MAX_FILE_BYTES:
            raise BitnasError(f"{p}: {size:,} bytes is larger than the {MAX_FILE_BYTES:,}-byte limit of an export "
                              "(raise $BITNAS_MAX_EXPORT_BYTES if it is genuine)")
        with open(p, "rb") as f:
            data = f.read(size + 1)
    except OSError as e:
        raise BitnasError(f"{p}: cannot read ({e.strerror or e})") from None
    return decode(data, str(p))


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: a deep value cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_HEADER_DEPTH:
            break
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v]
    return deepest


def decode(data: bytes, source: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if len(data) < _PREFIX.size + DIGEST_BYTES or data[:len(MAGIC)] != MAGIC:
        raise BitnasError(f"{source}: not a bitnas export (no export header)")
    _, version, hlen, plen = _PREFIX.unpack_from(data)
    if version != CONTAINER_VERSION:
        raise BitnasError(f"{source}: export container version {version} not supported (this bitnas reads "
                          f"{CONTAINER_VERSION})")
    if hlen > MAX_HEADER_BYTES:
        raise BitnasError(f"{source}: header of {hlen:,} bytes exceeds the {MAX_HEADER_BYTES:,}-byte limit")
    want = _PREFIX.size + hlen + plen + DIGEST_BYTES
    if len(data) != want:
        what = "truncated" if len(data) < want else "has trailing bytes"
        raise BitnasError(f"{source}: {what} ({len(data):,} bytes, its header says {want:,})")
    body = memoryview(data)[:-DIGEST_BYTES]
    if hashlib.sha256(body).digest() != data[-DIGEST_BYTES:]:
        raise BitnasError(f"{source}: SHA-256 mismatch, the file is corrupted (re-export it)")
    try:
        header = json.loads(bytes(body[_PREFIX.size:_PREFIX.size + hlen]).decode("utf-8"),
                            parse_constant=_not_json)
    except RecursionError:
        raise BitnasError(f"{source}: header nests deeper than {MAX_HEADER_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise BitnasError(f"{source}: unreadable header ({e})") from None
    if _depth(header) > MAX_HEADER_DEPTH:
        raise BitnasError(f"{source}: header nests deeper than {MAX_HEADER_DEPTH} levels")
    if not isinstance(header, dict) or not isinstance(header.get("sections"), dict):
        raise BitnasError(f"{source}: header is not an export description")
    payload = body[_PREFIX.size + hlen:]
    sections = {}
    for name, spec in header.pop("sections").items():
        if (not isinstance(spec, list) or len(spec) != 3 or spec[0] not in DTYPES
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in spec[1:])):
            raise BitnasError(f"{source}: section {name!r} is malformed")
        dt = DTYPES[spec[0]]
        off, count = spec[1], spec[2]
        if off + count * dt.itemsize > plen:
            raise BitnasError(f"{source}: section {name!r} runs past the end of the payload")
        sections[str(name)] = np.frombuffer(payload, dtype=dt, count=count, offset=off)
    return header, sections
