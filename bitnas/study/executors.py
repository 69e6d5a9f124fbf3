"""Where a study's trials run: local processes, or tasks on a Ray cluster (`bitnas[ray]`).

A trial is a command line run in the study directory with one CPU thread; its output goes to a
log file in its trial folder. An executor starts at most `slots` of them at a time and reports
each one's exit code when it ends.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnas.errors import ConfigError, brief
from bitnas.common.files import os_reason

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RAY_DEFAULT_PORT = 6379
# Seconds to wait for a Ray cluster at ray_address to answer (TCP, then ray.init) before the study
# is refused; ray.init alone retries an address that does not speak Ray for minutes.
RAY_CONNECT_TIMEOUT = float(os.environ.get("BITNAS_RAY_TIMEOUT", 30))


@dataclass(frozen=True)
class Job:
    """A trial's command, run with `cwd` as working directory, output appended to `log`."""

    id: str
    cmd: tuple[str, ...]
    cwd: str
    log: str


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the study process dies, however it dies,
    so no trial outlives a killed study; the rerun resumes it from its last checkpoint."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start(job: Job) -> subprocess.Popen:
    """The trial's process: one thread, its own process group, killed if its parent dies."""
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ONE_THREAD}
    with open(job.log, "ab") as out:
        return subprocess.Popen(list(job.cmd), cwd=job.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def _stop(procs: list[subprocess.Popen], sig: int, grace: float) -> None:
    """Send `sig` to each trial's process group (each checkpoints and exits), wait, then kill the rest."""
    for p in procs:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


STOP_GRACE = 120.0  # seconds a stopped trial gets to write its checkpoint


def run_job(job: Job) -> int:
    """Run one job to its end (a Ray task). Cancelled (Ray raises KeyboardInterrupt in the task), it
    stops the trial as a local stop does — SIGTERM, the trial checkpoints — and returns its code."""
    p = _start(job)
    try:
        while p.poll() is None:  # short sleeps: Ray's interrupt is raised between bytecodes, not in waitpid
            time.sleep(0.2)
        return p.returncode
    except KeyboardInterrupt:
        _stop([p], signal.SIGTERM, STOP_GRACE)
        return p.returncode


class LocalExecutor:
    """Up to `slots` trial processes on this machine."""

    name = "local"

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running: dict[str, subprocess.Popen] = {}

    def free(self) -> int:
        return self.slots - len(self.running)

    def submit(self, job: Job) -> None:
        self.running[job.id] = _start(job)

    def wait(self, timeout: float) -> list[tuple[str, int]]:
        """The jobs that ended (id, exit code), waiting up to `timeout` seconds for one."""
        end = time.monotonic() + timeout
        while True:
            done = [(i, p.returncode) for i, p in self.running.items() if p.poll() is not None]
            if done or not self.running or time.monotonic() >= end:
                for i, _ in done:
                    del self.running[i]
                return done
            time.sleep(0.2)

    def stop(self, sig: int, grace: float = STOP_GRACE) -> None:
        """Send `sig` to every running trial (each checkpoints and exits), wait, then kill the rest."""
        _stop(list(self.running.values()), sig, grace)
        self.running.clear()

    def close(self) -> None:
        pass


def ray_module() -> object:
    """The `ray` package, or a one-line ConfigError when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError("executor ray: Ray is not installed; pip install 'bitnas[ray]'") from None
    return ray


def check_ray_address(address: str, timeout: float | None = None) -> None:
    """Refuse a `ray_address` (HOST[:PORT] or ray://HOST[:PORT]) nothing answers on within `timeout`
    seconds: `ray.init` would otherwise wait for it without end. "" and "auto" are left to Ray."""
    if address in ("", "auto", "local"):
        return
    timeout = RAY_CONNECT_TIMEOUT if timeout is None else timeout
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, str(RAY_DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"ray_address {brief(address)}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else os_reason(e)
        raise ConfigError(f"ray_address: cannot reach a Ray cluster at {address[:100]} ({why}, waited at most "
                          f"{timeout:g} s; $BITNAS_RAY_TIMEOUT sets the wait)") from None


_RAY_PROBE = ("import sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, logging_level='ERROR', "
              "log_to_driver=False); ray.shutdown()")


def probe_ray(address: str, timeout: float | None = None) -> None:
    """Connect to the Ray cluster at `address` from a child process, killed after `timeout` seconds:
    ray.init retries an address that does not answer as Ray for minutes, and an attempt abandoned
    inside this process would outlive the refusal."""
    timeout = RAY_CONNECT_TIMEOUT if timeout is None else timeout
    p = subprocess.Popen([sys.executable, "-c", _RAY_PROBE, address], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise ConfigError(f"ray_address: no Ray cluster answered at {address[:100]} within {timeout:g} s "
                          "($BITNAS_RAY_TIMEOUT sets the wait)") from None
    if p.returncode != 0:
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()] or [f"exit code {p.returncode}"]
        raise ConfigError(f"executor ray: cannot connect to {address[:100]} ({lines[-1][:200]})")


def connect_ray(ray: Any, address: str, slots: int) -> None:
    """ray.init: a local instance of `slots` CPUs, or the cluster at `address` once `probe_ray`
    found it answering; a failure is one ConfigError line."""
    if address:
        check_ray_address(address)
        probe_ray(address)
    kw: dict[str, Any] = {"address": address} if address else {"num_cpus": slots}
    try:
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, **kw)
    except Exception as e:  # noqa: BLE001 - Ray's own errors, reported as one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"executor ray: cannot {'connect to ' + address[:100] if address else 'start Ray'} "
                          f"({first})") from None


class RayExecutor:
    """Trials as Ray tasks of one CPU each. The study directory must be on a filesystem every node
    shares (the tasks read and write the trial folders there)."""

    name = "ray"

    def __init__(self, slots: int, address: str = "") -> None:
        ray: Any = ray_module()
        self.ray = ray
        if not ray.is_initialized():
            connect_ray(ray, address, slots)
        self.slots = slots or int(ray.cluster_resources().get("CPU", 1))
        self.task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        self.running: dict[str, object] = {}

    def free(self) -> int:
        return self.slots - len(self.running)

    def submit(self, job: Job) -> None:
        Path(job.log).parent.mkdir(parents=True, exist_ok=True)
        self.running[job.id] = self.task.remote(job)

    def wait(self, timeout: float) -> list[tuple[str, int]]:
        if not self.running:
            return []
        refs = list(self.running.values())
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        done = []
        for job_id, ref in list(self.running.items()):
            if ref in ready:
                try:
                    rc = int(self.ray.get(ref))
                except Exception:  # noqa: BLE001 - a lost worker counts as a failed trial
                    rc = -1
                done.append((job_id, rc))
                del self.running[job_id]
        return done

    def stop(self, sig: int, grace: float = STOP_GRACE) -> None:
        """Cancel every running task: each stops its trial with SIGTERM (the trial checkpoints; see
        `run_job`); tasks still running after `grace` seconds are killed with their worker (their
        trials die with it: PR_SET_PDEATHSIG) and resume from their last checkpoint."""
        refs = list(self.running.values())
        for ref in refs:
            self.ray.cancel(ref, force=False)
        _, left = self.ray.wait(refs, num_returns=len(refs), timeout=grace + 5.0)
        for ref in left:
            self.ray.cancel(ref, force=True)
        self.running.clear()

    def close(self) -> None:
        self.ray.shutdown()


def make_executor(kind: str, slots: int, address: str = "") -> LocalExecutor | RayExecutor:
    if kind == "ray":
        return RayExecutor(slots, address)
    return LocalExecutor(slots)
