"""Long jobs (training, evaluation) run outside the consumer's poll loop, in their own processes.

The consumer only records a request in the ledger (status ``queued``) and commits. A supervisor
thread in the service starts each job through a launcher: a local process
(``python -m <module> --job-id ID``) or a Kubernetes Job (``shared.k8s_jobs``), so a crash of the
job never kills the service. The ledger is the truth: a job the ledger says is queued or running but
that the launcher reports as not running (the process died, the service restarted, the Kubernetes
Job ended) is started again, and the job resumes from its last checkpoint. A job marks itself
``completed`` or ``failed`` (with the reason); one that ends without doing so is retried up to
``max_attempts`` times, then marked failed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from shared.ledger import Ledger
from shared.paths import PathEscapeError, within

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


class UnlaunchableJob(Exception):
    """The launcher refused the run for good (e.g. the cluster rejects the Job): the job fails."""


class JobLauncher(Protocol):
    """Where job runs live. ``running`` must see runs started before a service restart where it can."""

    def start(self, job_id: str, attempt: int) -> None: ...

    def running(self) -> set[str]: ...

    def stop(self) -> None: ...


@dataclass
class LocalProcessLauncher:
    """Each run is a child process of the service; they stop with it and are started again after."""

    module: str  # the job's entry point, run as `python -m <module> --job-id ID`
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    _processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, job_id: str, attempt: int) -> None:
        """Start a run logging to ``<log_dir>/<job_id>.log``; an id that would log elsewhere fails the job."""
        try:
            log_path = within(self.log_dir, f"{job_id}.log")
        except PathEscapeError as exc:
            raise UnlaunchableJob(str(exc)) from exc
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child
        self._processes[job_id] = subprocess.Popen(
            [sys.executable, "-m", self.module, "--job-id", job_id],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.extra_env},
        )
        log.info("started job %s attempt %d (pid %d)", job_id, attempt, self._processes[job_id].pid)

    def running(self) -> set[str]:
        for job_id, process in list(self._processes.items()):
            code = process.poll()
            if code is not None:
                del self._processes[job_id]
                log.info("job %s exited with %d (log: %s)", job_id, code, self.log_dir / f"{job_id}.log")
        return set(self._processes)

    def stop(self) -> None:
        for process in self._processes.values():
            process.terminate()
        for process in self._processes.values():
            process.wait(timeout=60)


@dataclass
class JobSupervisor:
    ledger: Ledger
    kind: str
    launcher: JobLauncher
    max_attempts: int = 3
    max_parallel: int = 1
    on_failed: Callable[[str, str], None] = lambda job_id, reason: None
    # The service's /metrics registry: rounds done and rounds failed show that supervision is alive
    # (a stuck or failing supervisor leaves queued jobs waiting while the service looks healthy).
    registry: CollectorRegistry | None = None

    def __post_init__(self) -> None:
        registry = self.registry or CollectorRegistry()
        self._rounds = Counter(
            "vlf_job_supervision_rounds", "Job supervision rounds done.", ["kind"], registry=registry
        ).labels(kind=self.kind)
        self._failed_rounds = Counter(
            "vlf_job_supervision_failed_rounds",
            "Job supervision rounds that raised (ledger or cluster API unreachable).",
            ["kind"],
            registry=registry,
        ).labels(kind=self.kind)

    def run(self, stopped: threading.Event, interval_s: float = 1.0) -> None:
        """Supervise until ``stopped`` is set, then stop the launcher (its jobs resume later).

        An error in one round (ledger or cluster API unreachable) is logged and the next round runs:
        the supervisor never dies while the service looks healthy.
        """
        try:
            while not stopped.wait(interval_s):
                try:
                    self.tick()
                except Exception:
                    self._failed_rounds.inc()
                    log.exception("%s job supervision round failed; retrying", self.kind)
                else:
                    self._rounds.inc()
        finally:
            self.launcher.stop()

    def tick(self) -> None:
        running = self.launcher.running()
        busy = len(running)
        for job in self.ledger.jobs(kind=self.kind):
            if job.status not in ACTIVE or job.id in running:
                continue
            if job.attempts >= self.max_attempts:
                self._fail(job.id, f"gave up after {job.attempts} attempts that ended without a result")
                continue
            if busy >= self.max_parallel:
                continue
            # Counted before the start: a crash just after it (the service's pod killed once its Job
            # exists) would leave a live run the ledger never counted, and the next run would reuse
            # its number. A start that fails (refused, or the cluster API away) is uncounted again.
            self.ledger.update_job(job.id, attempts=job.attempts + 1)
            try:
                self.launcher.start(job.id, job.attempts + 1)
            except UnlaunchableJob as exc:
                self.ledger.update_job(job.id, attempts=job.attempts)
                self._fail(job.id, f"cannot be started: {exc}")
                continue
            except Exception:
                self.ledger.update_job(job.id, attempts=job.attempts)
                raise
            busy += 1

    def _fail(self, job_id: str, reason: str) -> None:
        """``on_failed`` (publish the failure) before the job leaves ``ACTIVE``: if it raises (broker
        away, producer not started yet), the next round tries again instead of never."""
        self.on_failed(job_id, reason)
        self.ledger.update_job(job_id, status="failed", error=reason)
