"""Long jobs (training, evaluation) run outside the consumer's poll loop, in their own processes.

The consumer only records a request in the ledger (status ``queued``) and commits. A supervisor
thread in the service starts one process per job (``python -m <module> --job-id ID``), so a crash
of the job never kills the service. The ledger is the truth: a job the ledger says is queued or
running but that has no live process here (the service restarted) is started again, and the job
resumes from its last checkpoint. A job process marks itself ``completed`` or ``failed`` (with the
reason); one that dies without doing so is retried up to ``max_attempts`` times, then marked failed.
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

from shared.ledger import Ledger

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


@dataclass
class JobSupervisor:
    ledger: Ledger
    kind: str
    module: str  # the job's entry point, run as `python -m <module> --job-id ID`
    log_dir: Path
    max_attempts: int = 3
    max_parallel: int = 1
    on_failed: Callable[[str, str], None] = lambda job_id, reason: None
    extra_env: dict[str, str] = field(default_factory=dict)
    _running: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, stopped: threading.Event, interval_s: float = 1.0) -> None:
        """Supervise until ``stopped`` is set; then stop the job processes (they resume later)."""
        try:
            while not stopped.wait(interval_s):
                self.tick()
        finally:
            for process in self._running.values():
                process.terminate()
            for process in self._running.values():
                process.wait(timeout=60)

    def tick(self) -> None:
        self._reap()
        for job in self.ledger.jobs(kind=self.kind):
            if job.status not in ACTIVE or job.id in self._running:
                continue
            if len(self._running) >= self.max_parallel:
                return
            if job.attempts >= self.max_attempts:
                reason = (
                    f"gave up after {job.attempts} attempts that ended without a result (see {self.log_dir})"
                )
                self.ledger.update_job(job.id, status="failed", error=reason)
                self.on_failed(job.id, reason)
                continue
            self._start(job.id)

    def _start(self, job_id: str) -> None:
        self.ledger.update_job(job_id, add_attempt=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_dir / f"{job_id}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, **self.extra_env}
        self._running[job_id] = subprocess.Popen(
            [sys.executable, "-m", self.module, "--job-id", job_id],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.info("started %s job %s (pid %d)", self.kind, job_id, self._running[job_id].pid)

    def _reap(self) -> None:
        for job_id, process in list(self._running.items()):
            code = process.poll()
            if code is None:
                continue
            del self._running[job_id]
            log.info("%s job %s exited with %d", self.kind, job_id, code)
