"""Wiring: settings -> ledger -> handlers + job supervisor -> Kafka runtime.

Run as ``python -m services.evaluator``; each eval job runs as ``python -m services.evaluator.job``.
"""

from __future__ import annotations

import logging
import threading
from functools import partial

from services.evaluator.handler import (
    EVAL_JOB_KIND,
    EvaluatorContext,
    failed_results,
    handle_checkpoint,
    handle_eval_request,
)
from services.evaluator.settings import EvaluatorSettings
from shared.contracts.topics import CHECKPOINTS, EVAL_REQUESTS, EVAL_RESULTS, EVALUATOR_GROUP
from shared.jobs import JobSupervisor, LocalProcessLauncher
from shared.ledger import Ledger
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.runtime.service import serve
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

JOB_MODULE = "services.evaluator.job"


def publish_failure(ledger: Ledger, runtime: KafkaRuntime, job_id: str, reason: str) -> None:
    """A job that kept dying gets a failed result for each benchmark it did not finish."""
    results = failed_results(ledger, job_id, reason)
    runtime.publish(results)
    ledger.record(*results)
    log.warning("eval job %s gave up: %s", job_id, reason)


def supervise_jobs(
    ledger: Ledger, settings: EvaluatorSettings, runtime: KafkaRuntime, stopped: threading.Event
) -> None:
    supervisor = JobSupervisor(
        ledger,
        kind=EVAL_JOB_KIND,
        launcher=LocalProcessLauncher(module=JOB_MODULE, log_dir=settings.job_log_dir),
        max_attempts=settings.max_attempts,
        on_failed=partial(publish_failure, ledger, runtime),
        registry=runtime.registry,
    )
    supervisor.run(stopped)


def main() -> None:
    common = CommonSettings()
    settings = EvaluatorSettings()
    ledger = Ledger(common.ledger_url)
    ledger.migrate()
    ctx = EvaluatorContext(ledger=ledger, settings=settings, registry_path=common.registry_path)
    definition = ServiceDefinition(
        name="evaluator",
        group_id=EVALUATOR_GROUP,
        routes={
            CHECKPOINTS.name: partial(handle_checkpoint, ctx=ctx),
            EVAL_REQUESTS.name: partial(handle_eval_request, ctx=ctx),
        },
        produces=(EVAL_RESULTS,),
        ready_checks={"ledger": ledger.ping},
    )
    try:
        serve(definition, common, settings, background=[partial(supervise_jobs, ledger, settings)])
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
