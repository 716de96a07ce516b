"""Wiring: requests are recorded and committed; a supervisor runs each job in its own process
(a child process, or a Kubernetes Job with ``VLF_TRAINER_LAUNCHER=kubernetes``)."""

from __future__ import annotations

import threading
from functools import partial

from services.trainer.handler import TrainerContext, handle_train_request
from services.trainer.settings import TrainerSettings
from shared.contracts import events as ev
from shared.contracts.topics import TRAIN_PROGRESS, TRAIN_REQUESTS, TRAINER_GROUP
from shared.jobs import JobLauncher, JobSupervisor, LocalProcessLauncher
from shared.ledger import Ledger
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.runtime.service import serve
from shared.settings import CommonSettings

JOB_MODULE = "services.trainer.job"
TRAINER_JOB_ID_ENV = "VLF_TRAINER_JOB_ID"  # set per run in the chart's Job template


def job_launcher(settings: TrainerSettings) -> JobLauncher:
    if settings.launcher == "kubernetes":
        from shared.k8s_jobs import KubernetesJobLauncher

        assert settings.job_template_path is not None  # checked by the settings
        return KubernetesJobLauncher(
            template_path=settings.job_template_path,
            namespace=settings.namespace,
            job_id_env=TRAINER_JOB_ID_ENV,
        )
    return LocalProcessLauncher(module=JOB_MODULE, log_dir=settings.job_log_dir)


def main() -> None:
    common = CommonSettings()
    settings = TrainerSettings()
    ledger = Ledger(common.ledger_url)
    ledger.migrate()
    launcher = job_launcher(settings)  # a broken Job template fails here, at start-up

    def supervise(runtime: KafkaRuntime, stopped: threading.Event) -> None:
        def failed(job_id: str, reason: str) -> None:
            runtime.publish([ev.TrainProgress(job_id=job_id, status="failed", error=reason)])

        supervisor = JobSupervisor(
            ledger=ledger,
            kind="train",
            launcher=launcher,
            max_attempts=settings.max_attempts,
            max_parallel=settings.max_parallel_jobs,
            on_failed=failed,
            registry=runtime.registry,
        )
        supervisor.run(stopped)

    definition = ServiceDefinition(
        name="trainer",
        group_id=TRAINER_GROUP,
        routes={TRAIN_REQUESTS.name: partial(handle_train_request, ctx=TrainerContext(ledger=ledger))},
        produces=(TRAIN_PROGRESS,),
        ready_checks={"ledger": ledger.ping},
    )
    try:
        serve(definition, common, settings, background=[supervise])
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
