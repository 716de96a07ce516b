"""Wiring: settings -> ledger, blobs, backend -> handler -> Kafka runtime. ``python -m services.sampler``."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry

from services.sampler.handler import SamplerContext, handle_instruction
from services.sampler.settings import SamplerSettings, with_lanes_for
from shared.backends.build import build_backend
from shared.blobs.images import ImagePolicy
from shared.blobs.store import BlobStore
from shared.contracts.topics import INSTRUCTIONS, RESPONSES, sampler_group
from shared.ledger import Ledger
from shared.ledger.async_ledger import AsyncLedger
from shared.registry import Registry
from shared.runtime.event_loop import LoopThread
from shared.runtime.kafka_runtime import ServiceDefinition
from shared.runtime.service import serve
from shared.settings import CommonSettings


def main() -> None:
    common = CommonSettings()
    settings = SamplerSettings()
    registry = Registry.load(common.registry_path)
    model = registry.model(settings.model_id)
    ledger = Ledger(common.ledger_url)
    ledger.migrate()
    loop = LoopThread(name="sampler-loop")  # the handler's lanes and the HTTP backend share it
    metrics_registry = CollectorRegistry()
    backend = build_backend(model, loop=loop, metrics=metrics_registry)
    async_ledger = AsyncLedger(ledger)
    ctx = SamplerContext(
        model=model,
        registry=registry,
        backend=backend,
        ledger=async_ledger,
        blobs=BlobStore(common.blob_url),
        image_policy=ImagePolicy(max_pixels=settings.max_pixels),
    )
    definition = ServiceDefinition(
        name="sampler",
        group_id=sampler_group(model.id),
        routes={INSTRUCTIONS.name: partial(handle_instruction, ctx=ctx)},
        produces=(RESPONSES,),
        ready_checks={"ledger": ledger.ping, "backend": backend.check},
        loop=loop,
    )
    try:
        serve(definition, with_lanes_for(common, model), settings, registry=metrics_registry)
    finally:
        backend.close()
        async_ledger.close()
        ledger.close()
        loop.stop()


if __name__ == "__main__":
    main()
