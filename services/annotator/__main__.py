"""Wiring: settings -> ledger, blobs, judge backend -> handler + gather timer -> Kafka runtime."""

from __future__ import annotations

import logging
import threading
from functools import partial

from prometheus_client import CollectorRegistry

from services.annotator.handler import AnnotatorContext, handle_response, sweep
from services.annotator.metrics import JudgeMetrics
from services.annotator.rubric import PromptTemplate
from services.annotator.settings import AnnotatorSettings
from shared.backends.build import build_backend
from shared.blobs.store import BlobStore
from shared.contracts.topics import ANNOTATIONS, RESPONSES, annotator_group
from shared.ledger import Ledger
from shared.registry import Registry
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.runtime.service import serve
from shared.settings import CommonSettings

log = logging.getLogger(__name__)


def gather_timer(ctx: AnnotatorContext, runtime: KafkaRuntime, stopped: threading.Event) -> None:
    """Every sweep interval, rate what waited past the gather timeout (only this replica's keys)."""
    while not stopped.wait(ctx.settings.sweep_interval_s):
        annotations = sweep(ctx, owns=lambda key: runtime.owns(RESPONSES.name, key))
        if annotations:
            runtime.publish(annotations)
            log.info("rated %d instructions after the gather timeout", len(annotations))


def main() -> None:
    common = CommonSettings()
    settings = AnnotatorSettings()
    registry = Registry.load(common.registry_path)
    judge = registry.judge(settings.judge_id)
    ledger = Ledger(common.ledger_url)
    ledger.migrate()
    metrics_registry = CollectorRegistry()
    backend = build_backend(judge, metrics=metrics_registry) if judge.kind == "ai" else None
    ctx = AnnotatorContext(
        judge=judge,
        registry=registry,
        backend=backend,
        ledger=ledger,
        blobs=BlobStore(common.blob_url),
        settings=settings,
        metrics=JudgeMetrics(metrics_registry),
        template=PromptTemplate.from_file(judge.prompt_template) if judge.prompt_template else None,
    )
    checks = {"ledger": ledger.ping} | ({"backend": backend.check} if backend else {})
    definition = ServiceDefinition(
        name="annotator",
        group_id=annotator_group(judge.id),
        routes={RESPONSES.name: partial(handle_response, ctx=ctx)},
        produces=(ANNOTATIONS,),
        ready_checks=checks,
    )
    try:
        serve(definition, common, settings, registry=metrics_registry, background=partial(gather_timer, ctx))
    finally:
        if backend is not None:
            backend.close()
        ledger.close()


if __name__ == "__main__":
    main()
