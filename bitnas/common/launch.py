"""`bitnas train|search --nproc N`: start N ranks on this machine and end with one line, not torchrun's report.

`torchrun --nproc_per_node=N -m bitnas train ...` works too, but when a rank fails torchrun's launcher
adds its own traceback (`ChildFailedError`) and a failure table to the ranks' one `bitnas: error:`
line. Here bitnas is the launcher: it runs torch's elastic agent in-process (the same machinery
torchrun uses, `--standalone` rendezvous on localhost, no restarts), silences the agent's log, and
the ranks hand their final line (an error, or the interruption notice of a signal) to the launcher
through a private folder ($BITNAS_LAUNCH_REPORTS) instead of printing it. The launcher prints the
line of the rank that failed first (the root cause) — or, when no rank could say anything (killed
by a signal), which rank ended how — and exits with that rank's code.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

from bitnas.errors import BitnasError

REPORTS_ENV = "BITNAS_LAUNCH_REPORTS"
_AGENT_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")


def strip_nproc(argv: list[str]) -> list[str]:
    """`argv` without `--nproc N` / `--nproc=N` (the ranks run the same command single-process)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def add_nproc_arg(p: argparse.ArgumentParser) -> None:
    from bitnas.config import positive_int

    p.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="run N processes on this machine (ranks of one job, like torchrun --nproc_per_node=N; "
                        "a failed rank ends the job with one error line)")


def maybe_launch(args: argparse.Namespace) -> int | None:
    """With `--nproc N > 1`, run the command as N ranks and return its exit code; else None."""
    if args.nproc <= 1:
        return None
    if os.environ.get("LOCAL_RANK") is not None:
        raise BitnasError("--nproc: this process is already a rank of a torchrun job; drop --nproc or torchrun")
    return launch(strip_nproc(args.argv), args.nproc)


def report_line(line: str) -> None:
    """A rank's final line: to the launcher when one started this rank, else to stderr."""
    folder, rank = os.environ.get(REPORTS_ENV), os.environ.get("RANK")
    if folder and rank is not None and Path(folder).is_dir():
        tmp = Path(folder) / f".rank{rank}.tmp"
        tmp.write_text(line + "\n", encoding="utf-8")
        tmp.replace(Path(folder) / f"rank{rank}")
        return
    print(line, file=sys.stderr)


def _quiet_agent() -> None:
    """The elastic agent logs warnings per rank it stops; the launcher's one line says what matters."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith(_AGENT_LOGGERS):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    for name in _AGENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _exit_code(code: int) -> int:
    """A rank's exit code as a shell reports it (killed by signal s → 128 + s)."""
    return 128 - code if code < 0 else code


def launch(argv: list[str], nproc: int) -> int:
    """Run `python -m bitnas ARGV` as `nproc` ranks on this machine; returns the exit code."""
    os.environ.setdefault("LOGLEVEL", "CRITICAL")  # the agent's loggers read it when first made
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _quiet_agent()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    with tempfile.TemporaryDirectory(prefix="bitnas-launch-") as folder:
        os.environ[REPORTS_ENV] = folder
        try:
            elastic_launch(config, sys.executable)("-m", "bitnas", *argv)
            return 0
        except ChildFailedError as e:
            rank, failure = e.get_first_failure()
            code = _exit_code(failure.exitcode)
            reported = {int(p.name[4:]): p.read_text(encoding="utf-8").strip()
                        for p in Path(folder).glob("rank*") if p.name[4:].isdigit()}
            line = reported.get(rank) or (reported[min(reported)] if reported else
                                          f"bitnas: error: rank {rank} of {nproc} ended with exit code {code} "
                                          "without a message (killed, or out of memory?)")
            print(line, file=sys.stderr)
            return code if code else 1
        except SignalException as e:
            reported = sorted(Path(folder).glob("rank*"))
            print(reported[0].read_text(encoding="utf-8").strip() if reported else
                  f"bitnas: interrupted (signal {int(e.sigval)})", file=sys.stderr)
            return 128 + int(e.sigval)
        finally:
            os.environ.pop(REPORTS_ENV, None)
