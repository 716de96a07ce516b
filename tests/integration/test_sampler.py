"""The sampler on the real broker, answering through the real openai client against a local server."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from shared.blobs.images import ImagePolicy
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.openai_test_server import TestServerConfig, serve_in_thread
from shared.registry import Registry
from shared.runtime.admin import EventPublisher
from shared.submit import SubmitRecord, build_instruction
from tests.integration.kafka_helpers import wait_until
from tests.integration.pipeline_helpers import COLOURS, Pipeline, png, write_registry


@pytest.fixture
def server():
    running = serve_in_thread(TestServerConfig(latency_s=0.01))
    yield running
    running.stop()


def _instructions(pipeline: Pipeline, registry: Registry, start: int, count: int) -> list[ev.Instruction]:
    blobs = BlobStore(str(pipeline.blob_dir))
    images = pipeline.tmp / "images"
    images.mkdir(exist_ok=True)
    out = []
    for n in range(start, start + count):
        colour = list(COLOURS)[n % 4]
        (images / f"{n}.png").write_bytes(png(colour))
        record = SubmitRecord(prompt=f"Instruction {n}: what colour is the square?", image=f"{n}.png")
        out.append(
            build_instruction(
                record,
                base_dir=images,
                policy=ImagePolicy(local_roots=(images,)),
                blobs=blobs,
                registry=registry,
            )
        )
    return out


def test_samplers_answer_exactly_their_assignment(kafka_bootstrap, namespace, ledger_url, tmp_path, server):
    registry_v1 = write_registry(tmp_path / "registry.yaml", server.base_url, ["m1", "m2", "m3"], k=2)
    pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry_v1)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    first = _instructions(pipeline, Registry.load(registry_v1), 0, 20)
    try:
        with EventPublisher(pipeline.settings) as publisher:
            publisher.publish(first)
            for model in ("m1", "m2", "m3"):
                pipeline.start("services.sampler", f"sampler-{model}", VLF_SAMPLER_MODEL_ID=model)
            wait_until(lambda: ledger.count(ev.Response) == 40, 90, "40 responses")

            calls_before = len(httpx.get(server.base_url.removesuffix("/v1") + "/_calls").json())
            publisher.publish(first)  # redelivery of every instruction

            registry_v2 = write_registry(
                tmp_path / "registry-v2.yaml", server.base_url, ["m1", "m2", "m3", "m4"], k=2
            )
            second = _instructions(pipeline, Registry.load(registry_v2), 20, 20)
            publisher.publish(second)
            pipeline.start(
                "services.sampler",
                "sampler-m4",
                VLF_SAMPLER_MODEL_ID="m4",
                VLF_REGISTRY_PATH=str(registry_v2),
            )
            expected = 40 + 2 * len(second)
            wait_until(lambda: ledger.count(ev.Response) == expected, 90, f"{expected} responses")
    finally:
        failures = pipeline.stop_all()
    assert not failures, failures
    by_instruction: dict[str, set[str]] = {}
    for response in ledger.iter_facts(ev.Response):
        by_instruction.setdefault(response.instruction_id, set()).add(response.model_id)
    for inst in first + second:
        assert by_instruction[inst.instruction_id] == set(inst.models)
    assert all("m4" not in inst.models for inst in first)
    assert Counter(r.model_id for r in ledger.iter_facts(ev.Response))["m4"] == sum(
        "m4" in i.models for i in second
    )
    calls = httpx.get(server.base_url.removesuffix("/v1") + "/_calls").json()
    assert len(calls) == calls_before + 2 * len(second), (
        "redelivered instructions must not call the model again"
    )
    assert all(call["n_images"] == 1 for call in calls)
    response = next(ledger.iter_facts(ev.Response))
    assert (
        response.status == "answered"
        and response.completion_tokens > 0
        and response.sampling.temperature == 0.7
    )
