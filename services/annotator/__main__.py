"""Wiring: settings -> ledger, blobs, judge backend -> handler + gather timer -> Kafka runtime."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry

from services.annotator.batches import batch_timer
from services.annotator.gather import gather_timer
from services.annotator.handler import AnnotatorContext, handle_response
from services.annotator.metrics import JudgeMetrics
from services.annotator.rubric import PromptTemplate
from services.annotator.settings import AnnotatorSettings
from shared.backends.build import build_backend, build_batch_client
from shared.blobs.store import BlobStore
from shared.contracts.topics import ANNOTATIONS, RESPONSES, annotator_group
from shared.ledger import Ledger
from shared.registry import Registry
from shared.runtime.kafka_runtime import ServiceDefinition
from shared.runtime.service import serve
from shared.settings import CommonSettings


def main() -> None:
    common = CommonSettings()
    settings = AnnotatorSettings()
    registry = Registry.load(common.registry_path)
    judge = registry.judge(settings.judge_id)
    ledger = Ledger(common.ledger_url)
    ledger.migrate()
    metrics_registry = CollectorRegistry()
    backend = build_backend(judge, metrics=metrics_registry) if judge.kind == "ai" else None
    batches = build_batch_client(judge) if judge.batch else None
    template = PromptTemplate.from_file(judge.prompt_template) if judge.prompt_template else None
    if template is not None:
        template.check_mode(judge.mode)
    ctx = AnnotatorContext(
        judge=judge,
        registry=registry,
        backend=backend,
        ledger=ledger,
        blobs=BlobStore(common.blob_url),
        settings=settings,
        metrics=JudgeMetrics(metrics_registry),
        template=template,
        batches=batches,
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
        background = [partial(gather_timer, ctx)]
        if batches is not None:
            background.append(partial(batch_timer, ctx, batches))
        serve(definition, common, settings, registry=metrics_registry, background=background)
    finally:
        if backend is not None:
            backend.close()
        if batches is not None:
            batches.close()
        ledger.close()


if __name__ == "__main__":
    main()
