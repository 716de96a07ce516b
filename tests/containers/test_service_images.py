"""The built images, run as the chart runs them (tests/containers/podman.py), against the real
broker and a real PostgreSQL ledger: each service answers ``/readyz`` on the host's own address, not
only on loopback, and the sampler, annotator and pair builder containers turn instructions into
pairs. The trainer's and evaluator's jobs run in the single-node cluster test (tests/cluster)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devkit.kafka_local import free_ports
from devkit.openai_test_server import TestServerConfig, default_responder, serve_in_thread
from shared.blobs.images import ImagePolicy
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts import topics
from shared.ledger import Ledger
from shared.registry import Registry
from shared.runtime.admin import EventPublisher
from shared.settings import CommonSettings
from tests.containers.podman import CPU_IMAGE, TRAIN_IMAGE, Container, require_image, run_service
from tests.integration.judge_responder import judge_responder
from tests.integration.kafka_helpers import wait_until
from tests.integration.pipeline_helpers import COLOURS, png, write_registry
from tests.postgres_server import postgres_server
from vlf.status import kafka_numbers
from vlf.submit import SubmitRecord, build_instruction

IMAGE_UID = 10001
INSTRUCTIONS = 12


def host_address() -> str:
    """This machine's own non-loopback address (a route lookup, no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))
        address = probe.getsockname()[0]
    assert not address.startswith("127."), address
    return address


@pytest.fixture
def ledger_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def _instructions(tmp: Path, blobs: BlobStore, registry: Registry) -> list[ev.Instruction]:
    images = tmp / "images"
    images.mkdir()
    out = []
    for n in range(INSTRUCTIONS):
        (images / f"{n}.png").write_bytes(png(list(COLOURS)[n % 4]))
        record = SubmitRecord(prompt=f"Instruction {n}: what colour is the square?", image=f"{n}.png")
        policy = ImagePolicy(local_roots=(images,))
        out.append(build_instruction(record, base_dir=images, policy=policy, blobs=blobs, registry=registry))
    return out


@pytest.mark.timeout(900)
def test_service_images_start_answer_probes_and_turn_instructions_into_pairs(
    kafka_bootstrap, namespace, ledger_url, tmp_path
):
    for image in (CPU_IMAGE, TRAIN_IMAGE):
        require_image(image)
    data = tmp_path / "data"
    (data / "blobs").mkdir(parents=True)
    # The default reply depends on the prompt only; answers that differ per model make pairs.
    servers = {
        m: serve_in_thread(
            TestServerConfig(responder=lambda request, m=m: f"{m}: {default_responder(request)}")
        )
        for m in ("m1", "m2")
    }
    judge_server = serve_in_thread(TestServerConfig(responder=judge_responder))
    judges = [{"id": "judge", "model": "test-model", "base_url": judge_server.base_url, "timeout_s": 10}]
    registry_path = write_registry(
        tmp_path / "registry.yaml", servers["m1"].base_url, ["m1", "m2"], k=2, judges=judges
    )
    registry = yaml.safe_load(registry_path.read_text())
    registry["models"][1]["base_url"] = servers["m2"].base_url
    registry_path.write_text(yaml.safe_dump(registry))
    registry_path.chmod(0o644)
    settings = CommonSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_namespace=namespace,
        ledger_url=ledger_url,
        blob_url=str(data / "blobs"),
        registry_path=registry_path,
    )
    instructions = _instructions(tmp_path, BlobStore(str(data / "blobs")), Registry.load(registry_path))
    for path in [data, *data.rglob("*")]:
        os.chown(path, IMAGE_UID, IMAGE_UID)
    env = {
        "VLF_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "VLF_TOPIC_NAMESPACE": namespace,
        "VLF_LEDGER_URL": ledger_url,
        "VLF_BLOB_URL": "file:///data/blobs",
        "VLF_COMMIT_INTERVAL_S": "0.2",
        "VLF_PAIRS_HELDOUT_FRACTION": "0",
        "VLF_LOG_JSON": "true",
    }
    services = [
        (CPU_IMAGE, "services.sampler", {"VLF_SAMPLER_MODEL_ID": "m1"}),
        (CPU_IMAGE, "services.sampler", {"VLF_SAMPLER_MODEL_ID": "m2"}),
        (CPU_IMAGE, "services.annotator", {"VLF_ANNOTATOR_JUDGE_ID": "judge"}),
        (CPU_IMAGE, "services.pair_builder", {}),
        (CPU_IMAGE, "services.trainer", {}),
        (TRAIN_IMAGE, "services.evaluator", {}),
    ]
    containers: list[Container] = []
    ledger = Ledger(ledger_url)
    ledger.migrate()
    address = host_address()
    try:
        for image, module, extra in services:
            containers.append(run_service(image, module, free_ports(), {**env, **extra}, data, registry_path))
        for container in containers:
            assert container.wait_ready(address).json()["ready"] is True
        with EventPublisher(settings) as publisher:
            publisher.publish(instructions)
        wait_until(lambda: ledger.count(ev.Annotation) == INSTRUCTIONS, 120, "every instruction rated")
        wait_until(
            lambda: kafka_numbers(settings)[1].get(topics.PAIR_BUILDER_GROUP) == 0, 60, "every rating paired"
        )
        pairs = ledger.count(ev.Pair)
    finally:
        exits = {c.name: (c.stop(), c.logs()[-2000:]) for c in containers}
        for server in [*servers.values(), judge_server]:
            server.stop()
    assert {name: code for name, (code, _) in exits.items() if code != 0} == {}, exits
    responses = list(ledger.iter_facts(ev.Response))
    assert sorted((r.instruction_id, r.model_id) for r in responses) == sorted(
        (i.instruction_id, m) for i in instructions for m in ("m1", "m2")
    )
    assert all(r.status == "answered" for r in responses)
    assert pairs > 0, "the hash judge gives distinct ratings to most answer pairs"
    for pair in ledger.iter_facts(ev.Pair):
        assert pair.chosen.response_id != pair.rejected.response_id and pair.margin > 0
