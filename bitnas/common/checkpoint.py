"""Sealed checkpoints: the zip files `torch.save` writes, with the SHA-256 of their bytes in the zip
comment; loaded with `weights_only=True` and refused when their bytes changed."""
from __future__ import annotations

import hashlib
import io
import math
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bitnas.common.files import atomic_write_bytes, os_reason
from bitnas.errors import BitnasError


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


PACKED = "__packed_tensor__"


def pack_tensors(obj: Any) -> dict[str, Any]:
    """Nested dicts/lists/tuples holding tensors → a tensor-free skeleton plus one flat tensor per dtype.

    Two supernets and their optimizers hold thousands of small tensors, which torch.save writes
    one by one; packed, a per-unit checkpoint is a few large copies. `unpack_tensors` inverts it
    bitwise."""
    tensors: list[Tensor] = []

    def walk(o: Any) -> Any:
        if isinstance(o, Tensor):
            tensors.append(o.detach())
            return {PACKED: len(tensors) - 1}
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(walk(v) for v in o)
        return o

    skeleton = walk(obj)
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(str(t.dtype).removeprefix("torch."), []).append(i)
    flat, meta = {}, [None] * len(tensors)
    for dtype, idx in groups.items():
        offset = 0
        for i in idx:
            meta[i] = [dtype, offset, list(tensors[i].shape)]
            offset += tensors[i].numel()
        flat[dtype] = torch.cat([tensors[i].reshape(-1).cpu() for i in idx])
    return {"skeleton": skeleton, "flat": flat, "meta": meta}


def unpack_tensors(packed: dict[str, Any]) -> Any:
    """The object `pack_tensors` packed (tensors on the CPU; `load_state_dict` moves them)."""
    flat, meta = packed["flat"], packed["meta"]

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            if set(o) == {PACKED}:
                dtype, offset, shape = meta[o[PACKED]]
                n = math.prod(shape)
                return flat[dtype][offset:offset + n].view(shape).clone()
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(walk(v) for v in o)
        return o

    return walk(packed["skeleton"])
