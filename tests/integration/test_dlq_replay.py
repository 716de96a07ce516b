"""``vlf dlq show|replay`` on the real broker, with real sampler processes.

The scenario an operator meets: an instruction names an image blob that is not (yet) in the store,
so every assigned sampler dead-letters it with ``BlobNotFound``. The operator restores the blob and
replays the DLQ: each sampler answers exactly once. A second replay sends nothing, and a letter
that no fix can help (invalid JSON) stays in the DLQ because the filter leaves it there.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest
from typer.testing import CliRunner

from devkit.openai_test_server import TestServerConfig, serve_in_thread
from shared.blobs.store import BlobStore, blob_uri
from shared.contracts import events as ev
from shared.contracts.codec import encode
from shared.contracts.ids import instruction_id
from shared.contracts.topics import INSTRUCTIONS, sampler_group
from shared.ledger import Ledger
from shared.runtime.admin import EventPublisher
from tests.integration.kafka_helpers import consume_all, produce, wait_until
from tests.integration.pipeline_helpers import Pipeline, png, write_registry
from vlf import dlq_tools
from vlf.cli.dlq_cmd import app as dlq_app

MODELS = ["m1", "m2"]
BLOB_NOT_FOUND = ("error.class", "BlobNotFound")


@pytest.fixture
def server():
    running = serve_in_thread(TestServerConfig(latency_s=0.01))
    yield running
    running.stop()


def _instruction(image: bytes, prompt: str) -> ev.Instruction:
    return ev.Instruction(
        instruction_id=instruction_id([hashlib.sha256(image).hexdigest()], prompt),
        prompt=prompt,
        image_uris=[blob_uri(image, suffix=".png")],
        models=MODELS,
    )


def _responses(ledger: Ledger, inst: ev.Instruction) -> list[str]:
    return sorted(r.model_id for r in ledger.responses_for(inst.instruction_id))


def _calls(server) -> int:  # noqa: ANN001
    return len(httpx.get(server.base_url.removesuffix("/v1") + "/_calls").json())


def test_replay_after_restoring_a_blob_answers_once(kafka_bootstrap, namespace, ledger_url, tmp_path, server):
    registry = write_registry(tmp_path / "registry.yaml", server.base_url, MODELS, k=2)
    pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
    settings = pipeline.settings
    ledger = Ledger(ledger_url)
    ledger.migrate()
    blobs = BlobStore(str(pipeline.blob_dir))
    good_image, lost_image = png("green"), png("red")
    blobs.put(good_image, suffix=".png")
    good = _instruction(good_image, "What colour is the square?")
    lost = _instruction(lost_image, "Which colour fills the image?")
    source = namespace + INSTRUCTIONS.name
    cli_env = {
        "VLF_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "VLF_TOPIC_NAMESPACE": namespace,
        "COLUMNS": "200",
    }
    try:
        with EventPublisher(settings) as publisher:
            publisher.publish([good, lost])
        produce(kafka_bootstrap, source, [(b"broken-0001", b"{not json")])
        for model in MODELS:
            pipeline.start("services.sampler", f"sampler-{model}", VLF_SAMPLER_MODEL_ID=model)
        wait_until(lambda: _responses(ledger, good) == MODELS, 90, "answers to the good instruction")
        wait_until(
            lambda: len(dlq_tools.read_dead_letters(settings, INSTRUCTIONS.name)) == 4, 60, "4 dead letters"
        )
        letters = dlq_tools.read_dead_letters(settings, INSTRUCTIONS.name)
        lost_letters = [letter for letter in letters if letter.error_class == "BlobNotFound"]
        assert len(lost_letters) == 2, [letter.details for letter in letters]
        assert {letter.details["service"] for letter in lost_letters} == {sampler_group(m) for m in MODELS}
        assert all(letter.key == lost.instruction_id.encode() for letter in lost_letters)
        assert all(letter.details["source.topic"] == source for letter in lost_letters)
        assert sum(letter.error_class == "ContractError" for letter in letters) == 2
        assert _responses(ledger, lost) == []

        shown = CliRunner().invoke(dlq_app, ["show", INSTRUCTIONS.name, "--limit", "10"], env=cli_env)
        assert shown.exit_code == 0, shown.output
        assert "BlobNotFound" in shown.output and "ContractError" in shown.output

        dry = dlq_tools.replay(settings, INSTRUCTIONS.name, where=BLOB_NOT_FOUND, dry_run=True)
        assert len(dry.replayed) == 2 and dry.skipped_by_filter == 2
        time.sleep(2)
        assert _responses(ledger, lost) == [], "a dry run must send nothing"

        blobs.put(lost_image, suffix=".png")  # the operator restores the missing image
        calls_before = _calls(server)
        replayed = CliRunner().invoke(
            dlq_app, ["replay", INSTRUCTIONS.name, "--where", "error.class=BlobNotFound"], env=cli_env
        )
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 2 letters" in replayed.output
        wait_until(lambda: _responses(ledger, lost) == MODELS, 90, "answers after the replay")

        again = dlq_tools.replay(settings, INSTRUCTIONS.name, where=BLOB_NOT_FOUND)
        assert again.replayed == [] and again.skipped_by_filter == 2
        unfiltered_dry = dlq_tools.replay(settings, INSTRUCTIONS.name, dry_run=True)
        assert [letter.error_class for letter in unfiltered_dry.replayed] == ["ContractError"] * 2
        time.sleep(3)  # time for anything (wrongly) re-sent to be answered
    finally:
        failures = pipeline.stop_all()
    assert not failures, failures
    assert _responses(ledger, lost) == MODELS, "exactly one answer per assigned model"
    # Each sampler got the lost instruction twice after the replay (both letters go back to the
    # shared source topic); the second copy is answered from the ledger without calling the model.
    assert _calls(server) - calls_before == len(MODELS)
    records = consume_all(kafka_bootstrap, source, expect=5)
    assert len(records) == 5, "3 originals + 2 replayed letters, nothing from the second replay"
    replays = [r for r in records if r.value == encode(lost)]
    assert len(replays) == 3 and all(r.key == lost.instruction_id.encode() for r in replays)
    assert all(not any(k.startswith("vlf.dlq.") for k, _ in r.headers) for r in records)
    marks = dlq_tools.replay_marks(settings, INSTRUCTIONS.name)
    assert (
        sorted(letter.error_class for letter in letters if marks[letter.partition].is_done(letter.offset))
        == ["BlobNotFound"] * 2
    )
