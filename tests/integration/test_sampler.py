"""The sampler on the real broker, answering through the real openai client against a local server."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from devkit.kafka_local import free_ports
from devkit.openai_test_server import TestServerConfig, serve_in_thread
from shared.blobs.images import ImagePolicy
from shared.blobs.store import BlobStore, blob_url
from shared.contracts import events as ev
from shared.contracts import topics
from shared.ledger import Ledger
from shared.registry import Registry
from shared.runtime.admin import EventPublisher
from shared.runtime.dlq import read_dlq_headers
from tests.integration.kafka_helpers import consume_all, wait_until
from tests.integration.pipeline_helpers import COLOURS, Pipeline, png, write_registry
from vlf.submit import SubmitRecord, build_instruction


@pytest.fixture
def server():
    running = serve_in_thread(TestServerConfig(latency_s=0.01))
    yield running
    running.stop()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        """Keep pytest output clean."""


@contextmanager
def serving_over_http(root: Path) -> Iterator[str]:
    """``root`` served as static files (how a bucket or a CDN serves the blob store)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietFiles, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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


def test_an_instruction_that_cannot_be_answered_is_dead_lettered_with_the_reason_and_the_rest_go_on(
    kafka_bootstrap, namespace, ledger_url, tmp_path
):
    """A missing image and a prompt over the model's context are permanent failures: each goes to
    the DLQ with its reason, once, while the other instructions are answered."""
    limited = serve_in_thread(TestServerConfig(latency_s=0.01, context_limit_tokens=200))
    registry = write_registry(tmp_path / "registry.yaml", limited.base_url, ["m1"], k=1)
    pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    good = [
        ev.Instruction(instruction_id=f"good-instruction-{n}", prompt=f"Say {n}.", models=["m1"])
        for n in range(4)
    ]
    missing_image = ev.Instruction(
        instruction_id="bad-image-instruction",
        prompt="What is it?",
        image_uris=["sha256:" + "0" * 64 + ".png"],
        models=["m1"],
    )
    too_long = ev.Instruction(instruction_id="bad-length-instruction", prompt="word " * 500, models=["m1"])
    http_port = free_ports()
    try:
        with EventPublisher(pipeline.settings) as publisher:
            publisher.publish([good[0], missing_image, good[1], too_long, good[2], good[3]])
        pipeline.start(
            "services.sampler", "sampler-m1", VLF_SAMPLER_MODEL_ID="m1", VLF_HTTP_PORT=str(http_port)
        )
        wait_until(lambda: ledger.count(ev.Response) == len(good), 60, "the good instructions answered")
        dead = consume_all(kafka_bootstrap, namespace + topics.INSTRUCTIONS.dlq, expect=2)
        metrics = httpx.get(f"http://127.0.0.1:{http_port}/metrics").text
    finally:
        failures = pipeline.stop_all()
        limited.stop()
    assert not failures, failures
    reasons = {record.key.decode(): read_dlq_headers(record.headers) for record in dead}
    assert set(reasons) == {"bad-image-instruction", "bad-length-instruction"}
    assert reasons["bad-image-instruction"]["error.class"] == "BlobNotFound"
    assert reasons["bad-length-instruction"]["error.class"] == "ContextLengthError"
    assert "context" in reasons["bad-length-instruction"]["error.message"].lower()
    assert {r.instruction_id for r in ledger.iter_facts(ev.Response)} == {i.instruction_id for i in good}
    # The model's series are on the sampler's own /metrics (the missing image never reached it).
    assert 'vlf_backend_requests_total{model="test-model",outcome="ok"} 4.0' in metrics
    assert 'vlf_backend_requests_total{model="test-model",outcome="context_length"} 1.0' in metrics
    assert 'vlf_backend_latency_seconds_count{model="test-model"} 4.0' in metrics


def test_a_model_with_an_image_url_base_sends_urls_that_the_server_fetches(
    kafka_bootstrap, namespace, ledger_url, tmp_path, server
):
    """No image bytes in the requests: the model server downloads each image from the blob store's
    HTTP address; an image missing from the store is dead-lettered before any call."""
    registry_path = write_registry(tmp_path / "registry.yaml", server.base_url, ["m1"], k=1)
    pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry_path)
    pipeline.blob_dir.mkdir()
    ledger = Ledger(ledger_url)
    ledger.migrate()
    with serving_over_http(pipeline.blob_dir) as blob_base:
        registry = yaml.safe_load(registry_path.read_text())
        registry["models"][0]["image_url_base"] = blob_base
        registry_path.write_text(yaml.safe_dump(registry))
        answerable = _instructions(pipeline, Registry.load(registry_path), 0, 3)
        missing = ev.Instruction(
            instruction_id="missing-image",
            prompt="What is it?",
            image_uris=["sha256:" + "0" * 64 + ".png"],
            models=["m1"],
        )
        try:
            with EventPublisher(pipeline.settings) as publisher:
                publisher.publish([*answerable, missing])
            pipeline.start("services.sampler", "sampler-m1", VLF_SAMPLER_MODEL_ID="m1")
            wait_until(
                lambda: ledger.count(ev.Response) == len(answerable), 60, "the answerable instructions"
            )
            (dead,) = consume_all(kafka_bootstrap, namespace + topics.INSTRUCTIONS.dlq, expect=1)
        finally:
            failures = pipeline.stop_all()
    assert not failures, failures
    calls = httpx.get(server.base_url.removesuffix("/v1") + "/_calls").json()
    assert all(call["status"] == 200 and call["n_images"] == 1 for call in calls)
    assert sorted(url for call in calls for url in call["fetched_image_urls"]) == sorted(
        blob_url(inst.image_uris[0], blob_base) for inst in answerable
    )
    assert dead.key == b"missing-image"
    assert read_dlq_headers(dead.headers)["error.class"] == "BlobNotFound"
