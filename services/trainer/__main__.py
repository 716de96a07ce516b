"""Wiring: requests are recorded and committed; a supervisor runs each job in its own process."""

from __future__ import annotations

import threading
from functools import partial

from services.trainer.handler import TrainerContext, handle_train_request
from services.trainer.settings import TrainerSettings
from shared.contracts import events as ev
from shared.contracts.topics import TRAIN_PROGRESS, TRAIN_REQUESTS
from shared.jobs import JobSupervisor
from shared.ledger import Ledger
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.runtime.service import serve
from shared.settings import CommonSettings


def main() -> None:
    common = CommonSettings()
    settings = TrainerSettings()
    ledger = Ledger(common.ledger_url)
    ledger.migrate()

    def supervise(runtime: KafkaRuntime, stopped: threading.Event) -> None:
        def failed(job_id: str, reason: str) -> None:
            runtime.publish([ev.TrainProgress(job_id=job_id, status="failed", error=reason)])

        supervisor = JobSupervisor(
            ledger=ledger,
            kind="train",
            module="services.trainer.job",
            log_dir=settings.job_log_dir,
            max_attempts=settings.max_attempts,
            max_parallel=settings.max_parallel_jobs,
            on_failed=failed,
        )
        supervisor.run(stopped)

    definition = ServiceDefinition(
        name="trainer",
        group_id="vlf-trainer",
        routes={TRAIN_REQUESTS.name: partial(handle_train_request, ctx=TrainerContext(ledger=ledger))},
        produces=(TRAIN_PROGRESS,),
        ready_checks={"ledger": ledger.ping},
    )
    try:
        serve(definition, common, settings, background=supervise)
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
