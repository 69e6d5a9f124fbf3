"""Fault injection for tests: crash, signal, freeze or record a process at named points of a run.

Product code only marks its milestones with `point(name, index, **payload)`; nothing happens
unless the environment variable BITNAS_FAULTS holds a JSON list of rules, each
`{"at": POINT, "index": N, "do": ACTION, ...}` (`index` omitted: every index; `rank`: only
that torchrun rank acts). Points:

    train.step        after optimizer step N of a training run (counted over the run, from 1)
    train.end         when a Trainer has trained its last epoch N; payload `state` (its weights)
    search.step       after weight step N of a search (differentiable, random, CP-NAS)
    search.arch_step  after α step N of a differentiable search; payload `tensors` (α/β)
    search.unit       after unit N of a search is computed, before it is logged and checkpointed
    search.end        when a search has written genotype.json; payload `state` (strategy state)
    study.trial       after trial N of a study run has finished (counted in this process, from 1)

Actions:

    kill     SIGKILL this process: a hard crash, no cleanup, no checkpoint
    signal   send `"signal"` (e.g. "SIGTERM", "SIGINT") to this process (`"to": "parent"`: to the
             process that started it, e.g. the `--nproc` launcher): a graceful stop
    freeze   stop answering (sleep; SIGINT/SIGTERM act as by default): a hung rank
    exit     `os._exit("code")`: a rank that dies without a word
    trace    append {"index", "sha256"} of the payload `tensors` to `"dir"`/trace_rank<r>.jsonl
    dump     torch.save the payload `state` (a callable) to `"dir"`/<point>_rank<r>.pt

Rules are read from the environment at every call (a handful of dict lookups when unset).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch

ENV = "BITNAS_FAULTS"
ACTIONS = ("kill", "signal", "freeze", "exit", "trace", "dump")

_parsed: tuple[str, list[dict[str, Any]]] = ("", [])


def rules() -> list[dict[str, Any]]:
    """The rules of $BITNAS_FAULTS ([] when unset); malformed rules raise ValueError."""
    global _parsed
    text = os.environ.get(ENV, "")
    if text != _parsed[0]:
        parsed = json.loads(text) if text.strip() else []
        if not isinstance(parsed, list) or not all(isinstance(r, dict) and r.get("do") in ACTIONS
                                                   and isinstance(r.get("at"), str) for r in parsed):
            raise ValueError(f"{ENV}: expected a JSON list of {{'at': POINT, 'do': one of {ACTIONS}, ...}}")
        _parsed = (text, parsed)
    return _parsed[1]


def point(name: str, index: int, **payload: Any) -> None:
    """Milestone `name` number `index` reached: apply the matching rules (normally none)."""
    if ENV not in os.environ:
        return
    rank = int(os.environ.get("RANK", "0") or 0)
    for rule in rules():
        if rule["at"] != name or rule.get("index", index) != index or rule.get("rank", rank) != rank:
            continue
        _ACTIONS[rule["do"]](rule, name, index, rank, payload)


def tensor_digest(tensors: Any) -> str:
    """SHA-256 over the bytes of a sequence of tensors (dtype and shape included)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_trace(path: str | Path) -> dict[int, str]:
    """index → digest of a trace file; an index recorded twice (redone after a resume) must agree."""
    out: dict[int, str] = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        i, h = int(rec["index"]), rec["sha256"]
        if out.get(i, h) != h:
            raise AssertionError(f"{path}: step {i} recorded twice with different digests")
        out[i] = h
    return out


def _kill(rule: dict[str, Any], name: str, index: int, rank: int, payload: dict[str, Any]) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _signal(rule: dict[str, Any], name: str, index: int, rank: int, payload: dict[str, Any]) -> None:
    pid = os.getppid() if rule.get("to") == "parent" else os.getpid()
    os.kill(pid, getattr(signal, rule.get("signal", "SIGTERM")))


def _freeze(rule: dict[str, Any], name: str, index: int, rank: int, payload: dict[str, Any]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # hung, not checkpointing: a signal ends it as it would by default
        signal.signal(sig, signal.SIG_DFL)
    while True:
        time.sleep(3600)


def _exit(rule: dict[str, Any], name: str, index: int, rank: int, payload: dict[str, Any]) -> None:
    os._exit(int(rule.get("code", 1)))


def _trace(rule: dict[str, Any], name: str, index: int, rank: int, payload: dict[str, Any]) -> None:
    tensors: Callable[[], Any] | Any = payload["tensors"]
    digest = tensor_digest(tensors() if callable(tensors) else tensors)
    path = Path(rule["dir"]) / f"trace_rank{rank}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps({"index": index, "sha256": digest}) + "\n")


def _dump(rule: dict[str, Any], name: str, index: int, rank: int, payload: dict[str, Any]) -> None:
    torch.save(payload["state"](), Path(rule["dir"]) / f"{name}_rank{rank}.pt")


_ACTIONS: dict[str, Callable[[dict[str, Any], str, int, int, dict[str, Any]], None]] = {
    "kill": _kill, "signal": _signal, "freeze": _freeze, "exit": _exit, "trace": _trace, "dump": _dump,
}
