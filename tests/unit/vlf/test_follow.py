"""`--wait`: a job is followed through the ledger's rows until it ends, whoever writes them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from shared.ledger import Ledger
from shared.ledger.tables import JobRow
from vlf.follow import JobWaitTimeout, training_view, wait_for_job


def _ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    return ledger


def test_waiting_follows_a_job_from_before_it_is_taken_to_its_failure(tmp_path: Path) -> None:
    ledger, service = _ledger(tmp_path), _ledger(tmp_path)  # the service writes through its own engine
    seen: list[tuple[str, int] | None] = []

    def run_the_job() -> None:
        time.sleep(0.3)
        service.create_job("train-1", "train", {})
        service.update_job("train-1", status="running", progress={"step": 3, "total_steps": 10})
        time.sleep(0.3)
        service.update_job("train-1", status="failed", error="CUDA out of memory")

    writer = threading.Thread(target=run_the_job)
    writer.start()
    row = wait_for_job(
        ledger,
        "train-1",
        lambda r: seen.append(None if r is None else (r.status, (r.progress or {}).get("step", 0))),
        poll_s=0.05,
        timeout_s=30,
    )
    writer.join()

    assert (row.status, row.error) == ("failed", "CUDA out of memory")
    assert seen[0] is None, "nothing to show before the trainer takes the request"
    assert ("running", 3) in seen and seen[-1] == ("failed", 3)


def test_a_wait_that_runs_out_says_where_the_job_stands(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.create_job("eval-1", "eval", {})
    with pytest.raises(JobWaitTimeout, match="job eval-1 still queued after 0.2 s"):
        wait_for_job(ledger, "eval-1", lambda _row: None, poll_s=0.05, timeout_s=0.2)
    with pytest.raises(JobWaitTimeout, match="not yet taken by a service"):
        wait_for_job(ledger, "eval-2", lambda _row: None, poll_s=0.05, timeout_s=0.1)


def test_the_training_view_shows_steps_loss_margin_and_eta() -> None:
    progress = {"step": 40, "total_steps": 120, "loss": 0.61234, "reward_margin": 0.4567, "eta_s": 185.0}
    view = training_view(JobRow(id="j", kind="train", status="running", progress=progress))
    assert (view.status, view.completed, view.total) == ("running", 40, 120)
    assert view.figures == "loss 0.6123 margin 0.457 ETA 3m05s"
    assert training_view(None).status == "queued"
    assert training_view(JobRow(id="j", kind="train", status="queued", progress={})).total is None
