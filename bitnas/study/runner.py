"""Run a study: every trial in its own folder, in parallel, resumable; records in trials.jsonl.

A trial is a `bitnas search`, `bitnas train`, fidelity-scoring or zero-cost-scoring process (one CPU thread) started
in the study directory with `--resume`, so a trial interrupted by a killed study continues from
its last checkpoint and ends bitwise as it would have. `trials.jsonl` holds one record per
finished trial, always rewritten whole (atomically) in the study's canonical trial order: a
study rerun with the same command skips what is recorded and ends with the same file whatever
the order the trials finished in (up to the wall-clock fields). Trials whose process fails are
not recorded; the study reports them and a rerun retries them.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bitnas.common.safe_yaml import read_yaml
from bitnas.common.signals import graceful_stop
from bitnas.common.steps import Steps
from bitnas.errors import BitnasError, ConfigError
from bitnas.run import check_creatable
from bitnas.study.checks import check_trials, read_records
from bitnas.study.executors import Job, make_executor, ray_module
from bitnas.study.records import TrialFiles, build_record, random_genotype_for
from bitnas.study.reuse import shared_records
from bitnas.study.spec import StudySpec, Trial
from bitnas.common.files import atomic_write_text

log = logging.getLogger("bitnas")

# Keys that may change between a study and its rerun without changing any result; arms may be
# added (or dropped), but an arm kept under the same name must keep its definition.
RERUN_FREE_KEYS = ("workers", "executor", "ray_address", "description", "name", "arms", "fidelity", "control")


class StudyRunner:
    """Runs the trials of `spec` in `out`; `fidelity_only` runs just the rank-fidelity trials."""

    def __init__(self, spec: StudySpec, out: str | Path, fidelity_only: bool = False,
                 reuse: list[str | Path] | None = None) -> None:
        self.spec = spec
        self.out = Path(out)
        self.fidelity_only = fidelity_only
        self.reuse = [Path(r) for r in reuse or []]
        self.shared: dict[str, dict[str, Any]] = {}
        self.files = TrialFiles(self.out)
        self.trials = spec.trials(fidelity_only)
        self.by_id = {t.id: t for t in self.trials}
        self.order = spec.trials()  # every trial of the spec: a --fidelity run keeps the others' records
        self.records: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, str] = {}

    # -- set-up ----------------------------------------------------------------------------
    def check(self) -> None:
        """Everything checked before the study folder is touched: --out, the folder's own spec and
        records (a rerun), the executor, and every check a trial would make before its first step."""
        where = f"--out {self.out}"
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"{where}: exists and is not a directory")
        check_creatable(self.out, where)
        self._check_rerun()
        self.records = read_records(self.out / "trials.jsonl", self.spec)
        if self.spec.executor == "ray":
            ray_module()
        check_trials(self.spec, self.fidelity_only)
        if self.reuse:
            self.shared = shared_records(self.spec, self.trials, self.records, self.reuse, self.out)

    def _check_rerun(self) -> None:
        """A study folder belongs to one spec: refuse a changed one (results would mix)."""
        saved = self.out / "study.yaml"
        mine = self.spec.to_dict()
        if saved.is_file():
            old = read_yaml(saved) or {}
            if not isinstance(old, dict):
                raise ConfigError(f"{saved}: not a study's study.yaml (a mapping of key: value); use another --out")
            changed = sorted(k for k in set(old) | set(mine)
                             if k not in RERUN_FREE_KEYS and old.get(k) != mine.get(k))
            arms = old.get("arms")
            before = {a.get("name"): a for a in arms if isinstance(a, dict)} if isinstance(arms, list) else {}
            changed += [f"arm {a['name']}" for a in mine["arms"] if a["name"] in before and before[a["name"]] != a]
            if changed:
                raise ConfigError(f"{self.out}: holds a study with other settings ({', '.join(changed)} differ); "
                                  "use another --out, or the same settings to resume it (arms may be added)")
        elif self.out.exists() and any(self.out.iterdir()):
            raise ConfigError(f"{self.out}: exists and is not a study folder; use another --out")

    def _slots(self) -> int:
        if self.spec.workers:
            return self.spec.workers
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:
            return os.cpu_count() or 1

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.check()
        executor = make_executor(self.spec.executor, self._slots(), self.spec.ray_address)  # before the folder
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "study.yaml", yaml.safe_dump(self.spec.to_dict(), sort_keys=False))
        except BaseException:
            executor.close()
            raise
        if self.shared:
            self.records.update(self.shared)
            self._write_records()
            log.info("study: %d training(s) shared with %s (the same settings and architecture)", len(self.shared),
                     ", ".join(str(r) for r in self.reuse))
        todo = [t for t in self.trials if t.id not in self.records]
        log.info("study %s: %d trials, %d already finished, %d to run → %s", self.spec.name, len(self.trials),
                 len(self.trials) - len(todo), len(todo), self.out)
        from bitnas.study.report import write_report

        bar = None
        try:
            with graceful_stop() as stop:
                steps = Steps("study.trial", stop=stop)
                bar = steps.counter(len(todo), f"study {self.spec.name}", "trial")
                self._loop(todo, executor, bar, steps)
        finally:  # a stopped study still reports what it has finished (table.md says it is incomplete)
            if bar is not None:
                bar.close()
            executor.close()
            self._write_records()
            report = write_report(self.spec, self.out, self._ordered_records())
        if self.failed:
            lines = "; ".join(f"{i} ({why})" for i, why in self.failed.items())
            raise BitnasError(f"study {self.spec.name}: {len(self.failed)} trial(s) failed: {lines}; "
                              "rerun the same command to retry them")
        return report

    def _ready(self, t: Trial, running: set[str]) -> bool:
        return t.id not in running and all(d in self.records for d in t.deps)

    def _loop(self, todo: list[Trial], executor: Any, bar: Any, steps: Steps) -> None:
        pending = list(todo)
        running: set[str] = set()
        while pending or running:
            if steps.stop_requested():
                log.info("study: %s received, checkpointing %d running trial(s)", steps.stop.name, len(running))
                executor.stop(signal.SIGTERM)
                self._write_records()
                raise steps.interrupted("rerun the same command to resume")
            blocked = [t for t in pending if any(d in self.failed for d in t.deps)]
            for t in blocked:
                pending.remove(t)
                self.failed[t.id] = f"depends on failed {', '.join(d for d in t.deps if d in self.failed)}"
            for t in [t for t in pending if self._ready(t, running)][: max(0, executor.free())]:
                executor.submit(self._job(t))
                running.add(t.id)
                pending.remove(t)
                log.info("study: started %s", t.id)
            if not running:
                if pending:
                    raise BitnasError(f"study: trials wait on trials that never ran: {pending[0].id}")
                break
            for job_id, rc in executor.wait(timeout=2.0):
                running.discard(job_id)
                self._finished(self.by_id[job_id], rc, steps.stop.requested)
                if bar is not None:
                    bar.update(1)
                steps.done()

    def _finished(self, t: Trial, rc: int, stopping: bool) -> None:
        if rc != 0:
            why = self.files.last_error(t) or f"exit code {rc}"
            if rc in (-signal.SIGTERM, 143, -signal.SIGINT, 130) and stopping:
                return
            self.failed[t.id] = why
            log.error("study: %s failed: %s (log: %s)", t.id, why, self.files.log(t))
            return
        try:
            rec = build_record(self.spec, t, self.files, self.records)
        except (BitnasError, OSError, KeyError, ValueError) as e:
            self.failed[t.id] = f"its results could not be read: {e}"
            log.error("study: %s: %s", t.id, self.failed[t.id])
            return
        self.records[t.id] = rec
        self._write_records()
        fig = rec.get("test_top1")
        log.info("study: finished %s%s", t.id, f" (test top-1 {fig:.2f} %)" if isinstance(fig, float) else "")

    def _ordered_records(self) -> list[dict[str, Any]]:
        return [self.records[t.id] for t in self.order if t.id in self.records]

    def _write_records(self) -> None:
        text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in self._ordered_records())
        atomic_write_text(self.out / "trials.jsonl", text)

    # -- commands --------------------------------------------------------------------------
    def _job(self, t: Trial) -> Job:
        d = self.files.dir(t)
        d.mkdir(parents=True, exist_ok=True)
        rel = self.files.rel
        if t.kind in ("score", "zero_cost"):
            genotypes = self.files.fidelity_genotypes()
            if not genotypes.is_file():
                gt = self.spec.arm(self.spec.fidelity.genotypes)  # type: ignore[union-attr]
                gs = [random_genotype_for(gt, i).to_dict() for i in range(gt.count)]
                atomic_write_text(genotypes, json.dumps(gs) + "\n")
            if t.kind == "score":
                cmd = [sys.executable, "-m", "bitnas.study.estimators.search", rel(self.files.dir(self.by_id[t.deps[0]])),
                       rel(genotypes), "--out", rel(d / "scores.json")]
            else:
                f = self.spec.fidelity
                atomic_write_text(d / "trial.yaml", yaml.safe_dump(self.files.trial_config(self.spec, t), sort_keys=False))
                cmd = [sys.executable, "-m", "bitnas.study.estimators.protocol", rel(d / "trial.yaml"), rel(genotypes),
                       "--estimators", ",".join(f.zero_cost), "--batches", str(f.zero_cost_batches),  # type: ignore[union-attr]
                       "--out", rel(d / "scores.json")]
            return Job(t.id, tuple(cmd), str(self.out), str(self.files.log(t)))
        cfg = self.files.trial_config(self.spec, t)
        atomic_write_text(d / "trial.yaml", yaml.safe_dump(cfg, sort_keys=False))
        command = "search" if t.kind == "search" else "train"
        cmd = [sys.executable, "-m", "bitnas", command, "--config", rel(d / "trial.yaml"), "--resume"]
        return Job(t.id, tuple(cmd), str(self.out), str(self.files.log(t)))


def run_study(spec: StudySpec, out: str | Path, fidelity_only: bool = False,
              reuse: list[str | Path] | None = None) -> dict[str, Any]:
    """Run (or resume) `spec` in `out`, taking finished trainings of the `reuse` study folders
    that are the same trainings; returns the report (also in table.md / report.json)."""
    t0 = time.time()
    result = StudyRunner(spec, out, fidelity_only, reuse).run()
    log.info("study %s: done in %.0f s → %s", spec.name, time.time() - t0, out)
    return result
