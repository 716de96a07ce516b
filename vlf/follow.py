"""`vlf train --wait` and `vlf eval --wait`: follow a job in the ledger until it ends.

The services record every job's status and progress in the ledger (the same rows `vlf status`
reads), so following needs no broker and survives a restart of the service that runs the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.ledger.tables import JobRow

FINAL_STATUSES = ("completed", "failed")


class JobWaitTimeout(TimeoutError):
    """The job had not ended when the wait ran out; it goes on regardless."""


@dataclass(frozen=True)
class JobView:
    """What a progress bar shows of a job: ``completed`` of ``total`` units and a line of figures."""

    status: str
    completed: float
    total: float | None
    figures: str


def wait_for_job(
    ledger: Ledger,
    job_id: str,
    on_update: Callable[[JobRow | None], None],
    *,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> JobRow:
    """Poll the job's row until its status is final and return it; ``on_update`` sees every read
    (None until the service has taken the request)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        row = ledger.job(job_id)
        on_update(row)
        if row is not None and row.status in FINAL_STATUSES:
            return row
        if deadline is not None and time.monotonic() >= deadline:
            status = "not yet taken by a service" if row is None else row.status
            raise JobWaitTimeout(f"job {job_id} still {status} after {timeout_s:g} s")
        time.sleep(poll_s)


def training_view(row: JobRow | None) -> JobView:
    """Steps done of all steps, with the loss, reward margin and the trainer's ETA."""
    if row is None:
        return JobView("queued", 0, None, "waiting for the trainer")
    progress = row.progress or {}
    figures = []
    for name, key, spec in (("loss", "loss", ".4f"), ("margin", "reward_margin", ".3f")):
        if progress.get(key) is not None:
            figures.append(f"{name} {progress[key]:{spec}}")
    if progress.get("eta_s") is not None and row.status == "running":
        minutes, seconds = divmod(int(progress["eta_s"]), 60)
        figures.append(f"ETA {minutes}m{seconds:02d}s")
    total = progress.get("total_steps") or None
    return JobView(row.status, progress.get("step", 0), total, " ".join(figures))


def evaluation_view(
    ledger: Ledger, eval_id: str, benchmarks: list[str]
) -> Callable[[JobRow | None], JobView]:
    """Benchmarks with a result, of those asked for, naming any that failed."""

    def view(row: JobRow | None) -> JobView:
        if row is None:
            return JobView("queued", 0, len(benchmarks), "waiting for the evaluator")
        results = list(ledger.iter_facts(ev.EvalResult, eval_id=eval_id))
        failed = sorted(r.benchmark for r in results if r.status == "failed")
        return JobView(
            row.status, len(results), len(benchmarks), f"failed: {', '.join(failed)}" if failed else ""
        )

    return view
