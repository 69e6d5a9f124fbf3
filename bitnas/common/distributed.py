"""Multi-process runs under torchrun (search and training): process group, DDP wrapper, reductions.

`init_distributed` reads RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun). Without them the
run is a single process and every helper here is a no-op. CPU uses the gloo backend, CUDA
nccl with one device per local rank.

Every collective waits at most `timeout` seconds (`BITNAS_DIST_TIMEOUT`, default
`DEFAULT_TIMEOUT`) instead of the backend's 30 minutes, so a dead or frozen rank ends the job
in bounded time; `lost_rank_error` turns the backend's exception into one user-facing line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bitnas.errors import BitnasError, ConfigError

TIMEOUT_ENV = "BITNAS_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs progress."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} is not an integer") from None


def dist_timeout() -> float:
    """Seconds a collective may wait for the other ranks: $BITNAS_DIST_TIMEOUT or the default."""
    v = os.environ.get(TIMEOUT_ENV, "").strip()
    if not v:
        return DEFAULT_TIMEOUT
    try:
        t = float(v)
    except ValueError:
        t = -1.0
    if not 0 < t < 1e7:
        raise ConfigError(f"environment variable {TIMEOUT_ENV}={v!r}: expected seconds > 0")
    return t


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if RANK/WORLD_SIZE are set (gloo on CPU, nccl on CUDA)."""
    timeout = timedelta(seconds=dist_timeout())
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local = _env_int("LOCAL_RANK") or 0
    dev = resolve_device(device)
    if rank is None or world is None or world <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=timeout)
        owns = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def wrap_model(model: nn.Module, info: DistInfo, find_unused: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` when world_size > 1, else `model` itself;
    `find_unused` tolerates parameters without gradient (a learned α unused in stage 1)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """Sum of `t` over all processes (a new tensor; `t` itself when single-process)."""
    if not info.enabled:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """[obj of rank 0, obj of rank 1, …]; [obj] when single-process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank: an evaluation on each
    rank's share of a split then uses the network rank 0 saves, not each rank's own statistics."""
    if not info.enabled:
        return
    for b in module.buffers():
        dist.broadcast(b, src=0)


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Barrier, then destroy the process group if this run created it."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        if info.owns_group:
            dist.destroy_process_group()


# What gloo and nccl say when a peer died (connection closed) or stopped answering (timed out).
LOST_RANK_SIGNS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe", "gloo", "nccl")


def is_lost_rank(e: BaseException) -> bool:
    """True for the exceptions a collective raises in a torchrun job when another rank died or froze."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    multi = (_env_int("WORLD_SIZE") or 1) > 1
    return multi and isinstance(e, RuntimeError) and any(k in str(e).lower() for k in LOST_RANK_SIGNS)


def lost_rank_error(e: BaseException) -> BitnasError:
    """The one-line error of a rank whose peers died or froze (the backend's message shortened)."""
    rank = dist.get_rank() if dist.is_initialized() else _env_int("RANK")
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return BitnasError(f"rank {rank}: lost contact with the other processes of this torchrun job (a rank died or "
                       f"did not answer within {dist_timeout():g} s, ${TIMEOUT_ENV}): {first}")


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if `flag` is true on any (one tiny all-reduce; `flag` when single-process)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def on_main_rank(check: Callable[[], None], info: DistInfo) -> None:
    """Run `check` on rank 0 only (e.g. a look at the run directory, which rank 0 alone writes);
    when it raises a BitnasError every rank raises the same error, so no rank goes on alone."""
    error: BitnasError | None = None
    if info.is_main:
        try:
            check()
        except BitnasError as e:
            error = e
    if info.enabled:
        message = broadcast_object(None if error is None else str(error), info)
        if message is not None and error is None:
            error = BitnasError(message)
    if error is not None:
        raise error


def resolve_device(name: str) -> torch.device:
    """auto → cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"--device '{name}': expected auto, cpu or cuda")
    return torch.device(name)
