"""The poison catalogue: every kind of bad input lands in its DLQ with the reason a user can act on,
and the service that refused it stays up and keeps processing what follows.

One process per service (sampler m1, plus two samplers whose model entry is broken on purpose: one
names a model the server does not serve, one talks to a server that always hangs), one annotator,
one trainer and one evaluator, each fed several poison messages before a valid one. Image URL and
path problems are refused by ``vlf submit`` before anything is published, so they are checked
through ``vlf.submit.build_instruction``.
"""

from __future__ import annotations

import json
import re
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import MessageSizeTooLargeError
from kafka.structs import TopicPartition

from devkit.openai_test_server import TestServerConfig, serve_in_thread
from shared.blobs.images import ImagePolicy
from shared.blobs.store import BlobStore, blob_uri
from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import encode
from shared.errors import PermanentError
from shared.ledger import Ledger
from shared.runtime.admin import ensure_topics
from shared.runtime.dlq import read_dlq_headers
from tests.integration.judge_responder import judge_responder, prompt_text
from tests.integration.kafka_helpers import create_topics, produce, wait_until
from tests.integration.pipeline_helpers import Pipeline, png
from vlf.submit import SubmitRecord, build_instruction

MAX_PIXELS = 10_000
KINDS = (
    "invalid-json", "not-an-object", "schema-version", "missing-field", "wrong-type", "extra-field",
    "oversized", "tombstone", "missing-blob", "undecodable-image", "decompression-bomb", "over-pixel-limit",
    "context-length", "model-4xx", "model-timeouts", "response-invalid-json", "judge-unparseable",
    "ratings-out-of-range", "wrong-number-of-ratings", "train-missing-model", "train-loss-weights",
    "eval-missing-benchmark", "eval-missing-adapter", "eval-unknown-endpoint", "checkpoint-missing",
)  # fmt: skip
CONTEXT_LIMIT = 300


@dataclass(frozen=True)
class Poison:
    kind: str
    topic: topics.TopicSpec
    payload: bytes | tuple[bytes, ...] | None  # a tuple: several records, the last one dead-lettered
    service: str  # the consumer group expected to dead-letter it
    error_class: str
    message: str  # a substring of the DLQ's error message

    @property
    def records(self) -> tuple[bytes | None, ...]:
        return self.payload if isinstance(self.payload, tuple) else (self.payload,)

    @property
    def key(self) -> bytes:
        return f"poison-{self.kind}".encode()


def poison_judge(request: dict) -> str:
    """The test judge, broken on demand: OUT-OF-RANGE rates 9, TOO-FEW rates one answer too few."""
    reply = judge_responder(request)
    prompt = prompt_text(request["messages"])
    if "OUT-OF-RANGE" in prompt:
        return re.sub(r"Rating: \d", "Rating: 9", reply)
    if "TOO-FEW" in prompt:
        return reply[: reply.rindex("## Answer")]
    return reply


def huge_png() -> bytes:
    """A tiny PNG whose header declares 100000 x 100000 pixels (a decompression bomb's calling card)."""
    data = bytearray(png("red"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", 100_000, 100_000)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def read_all(bootstrap: str, name: str) -> list:
    """Every record of a topic. Dead letters of oversized payloads exceed kafka-python's default frame
    limit (``receive_message_max_bytes`` = 1,000,000), which would stall a default consumer."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        receive_message_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        partitions = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list = []
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def _instruction(kind: str, models: list[str], prompt: str = "What colour is the square?", **kw) -> bytes:
    inst = ev.Instruction(
        instruction_id=f"{uuid.uuid4().hex[:12]}-{kind}", prompt=prompt, models=models, **kw
    )
    return encode(inst)


def _responses(kind: str, image: str) -> list[ev.Response]:
    inst = ev.Instruction(
        instruction_id=f"{uuid.uuid4().hex[:12]}-{kind}",
        prompt=f"{kind} what colour is it?",
        image_uris=[image],
        models=["m1", "m2"],
    )
    return [
        ev.Response(
            response_id=f"{inst.instruction_id}-{m}",
            instruction=inst,
            model_id=m,
            sampling={"temperature": 0.7},
            text=f"{m} thinks it is red ({kind})",
            status="answered",
            finish_reason="stop",
        )
        for m in ("m1", "m2")
    ]


def _encoded(events: list[ev.Response]) -> tuple[bytes, ...]:
    return tuple(encode(e) for e in events)


def catalogue(blobs: BlobStore, tmp: Path) -> list[Poison]:
    red = blobs.put(png("red"), suffix=".png")
    template = json.loads(_instruction("template", ["m1"], image_uris=[red]))
    s1, s404, sslow = "vlf-sampler.m1", "vlf-sampler.m404", "vlf-sampler.mslow"
    inst, resp = topics.INSTRUCTIONS, topics.RESPONSES

    def variant(**changes: object) -> bytes:
        return json.dumps({**template, "instruction_id": uuid.uuid4().hex[:12], **changes}).encode()

    train = ev.TrainRequest(job_id="poison-train", base_model=str(tmp / "no-such-model"))
    bad_weights = ev.TrainRequest(
        job_id="poison-weights",
        base_model="Qwen/Qwen2-VL-2B-Instruct",
        hparams=ev.TrainHyperparams(loss_type=["sigmoid", "sft"], loss_weights=[1.0]),
    )
    return [
        Poison("invalid-json", inst, b"{not json", s1, "ContractError", "invalid JSON"),
        Poison("not-an-object", inst, b"[1, 2]", s1, "ContractError", "must be a JSON object"),
        Poison("schema-version", inst, variant(schema_version=2), s1, "ContractError",
               "unknown schema_version 2"),
        Poison("missing-field", inst, json.dumps({"schema_version": 1, "prompt": "p"}).encode(), s1,
               "ContractError", "instruction_id: Field required"),
        Poison("wrong-type", inst, variant(samples_per_model="many"), s1, "ContractError",
               "samples_per_model"),
        Poison("extra-field", inst, variant(colour="red"), s1, "ContractError",
               "Extra inputs are not permitted"),
        Poison("oversized", inst, b'{"pad": "' + b"x" * 1_010_000 + b'"}', s1, "ContractError",
               "exceeds the 1000000-byte limit"),
        Poison("tombstone", inst, None, s1, "ContractError", "tombstone"),
        Poison("missing-blob", inst, variant(image_uris=[blob_uri(b"never stored", suffix=".png")]), s1,
               "BlobNotFound", "sha256:"),
        Poison("undecodable-image", inst, variant(image_uris=[blobs.put(b"not an image", suffix=".png")]), s1,
               "InvalidImage", "undecodable image"),
        Poison("decompression-bomb", inst, variant(image_uris=[blobs.put(huge_png(), suffix=".png")]), s1,
               "InvalidImage", "too many pixels"),
        Poison("over-pixel-limit", inst, variant(image_uris=[blobs.put(png("red", 200), suffix=".png")]), s1,
               "InvalidImage", f"200x200 > {MAX_PIXELS}"),
        Poison("context-length", inst, variant(prompt="word " * CONTEXT_LIMIT), s1, "ContextLengthError",
               "maximum context length"),
        Poison("model-4xx", inst, variant(models=["m404"]), s404, "PermanentBackendError", "no-such-model"),
        Poison("model-timeouts", inst, variant(models=["mslow"]), sslow, "TransientBackendError", "gave up"),
        Poison("response-invalid-json", resp, b"\xff\xfe", "vlf-annotator.judge", "ContractError",
               "invalid JSON"),
        Poison("judge-unparseable", resp, _encoded(_responses("GARBAGE-ALWAYS", red)), "vlf-annotator.judge",
               "RatingParseError", "no ratings found in the reply"),
        Poison("ratings-out-of-range", resp, _encoded(_responses("OUT-OF-RANGE", red)),
               "vlf-annotator.judge", "RatingParseError", "9"),
        Poison("wrong-number-of-ratings", resp, _encoded(_responses("TOO-FEW", red)), "vlf-annotator.judge",
               "RatingParseError", "Answer 2"),
        Poison("train-missing-model", topics.TRAIN_REQUESTS, encode(train), "vlf-trainer",
               "InvalidTrainRequest",
               "does not exist"),
        Poison("train-loss-weights", topics.TRAIN_REQUESTS, encode(bad_weights), "vlf-trainer",
               "InvalidTrainRequest", "one weight per loss_type"),
        Poison("eval-missing-benchmark", topics.EVAL_REQUESTS,
               encode(ev.EvalRequest(eval_id="poison-bench", model=ev.ModelRef(name="m", base_model="x"),
                                     benchmarks=["vqav2"])),
               "vlf-evaluator", "UnknownBenchmarkError", "vqav2"),
        Poison("eval-missing-adapter", topics.EVAL_REQUESTS,
               encode(ev.EvalRequest(eval_id="poison-adapter",
                                     model=ev.ModelRef(name="m", base_model="x",
                                                       adapter_uri=str(tmp / "gone")),
                                     benchmarks=["mme"])),
               "vlf-evaluator", "MissingCheckpointError", "adapter_uri"),
        Poison("eval-unknown-endpoint", topics.EVAL_REQUESTS,
               encode(ev.EvalRequest(eval_id="poison-endpoint",
                                     model=ev.ModelRef(name="m", base_model="x", endpoint_id="attacker"),
                                     benchmarks=["mme"])),
               "vlf-evaluator", "UnknownEndpointError", "attacker"),
        Poison("checkpoint-missing", topics.CHECKPOINTS,
               encode(ev.Checkpoint(checkpoint_id="poison-ckpt", job_id="j", base_model="x",
                                    artifact_uri=f"file://{tmp / 'no-ckpt'}", kind="merged")),
               "vlf-evaluator", "MissingCheckpointError", "artifact_uri"),
    ]  # fmt: skip


def _registry(path: Path, good_url: str, judge_url: str, hanging_url: str) -> Path:
    def model(model_id: str, name: str, url: str, timeout_s: float) -> dict:
        return {"id": model_id, "backend": "openai", "model": name, "base_url": url, "timeout_s": timeout_s,
                "sampling": {"temperature": 0.7, "max_tokens": 16}}  # fmt: skip

    registry = {
        "models_per_instruction": 2,
        "models": [
            model("m1", "test-model", good_url, 5),
            model("m2", "test-model", good_url, 5),
            model("m404", "no-such-model", good_url, 5),
            model("mslow", "test-model", hanging_url, 0.3),
        ],
        "judges": [{"id": "judge", "model": "test-model", "base_url": judge_url, "timeout_s": 5}],
    }
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture(scope="module")
def poisoned(kafka_bootstrap, tmp_path_factory):
    """Run every service over the catalogue, then a valid message each; returns what came out."""
    tmp = tmp_path_factory.mktemp("poison")
    good = serve_in_thread(TestServerConfig(context_limit_tokens=CONTEXT_LIMIT, latency_s=0.01))
    judge = serve_in_thread(TestServerConfig(responder=poison_judge, latency_s=0.01))
    hanging = serve_in_thread(TestServerConfig(timeout_rate=1.0, hang_s=2))
    namespace = f"p{uuid.uuid4().hex[:10]}."
    ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
    pipeline = Pipeline(
        kafka_bootstrap,
        namespace,
        ledger_url,
        tmp,
        _registry(tmp / "r.yaml", good.base_url, judge.base_url, hanging.base_url),
    )
    ledger = Ledger(ledger_url)
    ledger.migrate()
    blobs = BlobStore(str(pipeline.blob_dir))
    poisons = catalogue(blobs, tmp)
    ensure_topics(pipeline.settings, topics.ALL_TOPICS)
    for poison in poisons:
        produce(kafka_bootstrap, namespace + poison.topic.name, [(poison.key, r) for r in poison.records])
    red = blobs.put(png("red"), suffix=".png")
    valid_instruction = ev.Instruction(
        instruction_id="0123abcd-valid", prompt="Valid?", image_uris=[red], models=["m1"]
    )
    valid_responses = _responses("valid", red)
    try:
        for model in ("m1", "m404", "mslow"):
            pipeline.start("services.sampler", f"sampler-{model}", VLF_SAMPLER_MODEL_ID=model,
                           VLF_SAMPLER_MAX_PIXELS=str(MAX_PIXELS), VLF_RETRY_ATTEMPTS="2")  # fmt: skip
        pipeline.start("services.annotator", "annotator", VLF_ANNOTATOR_JUDGE_ID="judge")
        pipeline.start("services.trainer", "trainer", HF_HUB_OFFLINE="1",
                       VLF_TRAINER_CHECKPOINT_DIR=str(tmp / "ckpt"),
                       VLF_TRAINER_JOB_LOG_DIR=str(tmp / "jobs"))  # fmt: skip
        pipeline.start("services.evaluator", "evaluator")
        produce(kafka_bootstrap, namespace + topics.INSTRUCTIONS.name,
                [(valid_instruction.instruction_id.encode(), encode(valid_instruction))])  # fmt: skip
        produce(kafka_bootstrap, namespace + topics.RESPONSES.name,
                [(r.instruction_id.encode(), encode(r)) for r in valid_responses])  # fmt: skip
        dead = {}

        def all_dead() -> bool:
            for spec in {p.topic for p in poisons}:
                for record in read_all(kafka_bootstrap, namespace + spec.dlq):
                    headers = read_dlq_headers(record.headers)
                    dead[(record.key, headers["service"])] = headers
            return all((p.key, p.service) in dead for p in poisons)

        wait_until(all_dead, 150, "every poison message in its DLQ")
        wait_until(
            lambda: (
                ledger.count(ev.Response, instruction_id=valid_instruction.instruction_id) == 1
                and ledger.count(ev.Annotation, instruction_id=valid_responses[0].instruction_id) == 1
            ),
            60,
            "the valid instruction answered and the valid answers rated",
        )
        alive = {log.name: process.poll() is None for process, log in pipeline.processes}
        yield {"poisons": poisons, "dead": dead, "alive": alive}
    finally:
        failures = pipeline.stop_all()
        good.stop()
        judge.stop()
        hanging.stop()
    assert not failures, failures


def test_every_service_survives_its_poison(poisoned):
    assert all(poisoned["alive"].values()), poisoned["alive"]


def test_the_catalogue_is_complete(poisoned):
    assert [p.kind for p in poisoned["poisons"]] == list(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_poison_lands_in_its_dlq_with_its_reason(poisoned, kind):
    poison = next(p for p in poisoned["poisons"] if p.kind == kind)
    headers = poisoned["dead"][(poison.key, poison.service)]
    assert headers["error.class"] == poison.error_class, (poison.kind, headers)
    assert poison.message in headers["error.message"], (poison.kind, headers["error.message"])
    assert headers["source.topic"].endswith(poison.topic.name)


def test_payloads_over_kafkas_limit_never_leave_the_producer(kafka_bootstrap):
    """Above ~1 MiB the client refuses the record itself (the consumer-side check covers 1 MB to 1 MiB)."""
    name = f"vlf.oversized.{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, [name], partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        with pytest.raises(MessageSizeTooLargeError):
            producer.send(name, value=b"x" * 1_200_000).get(timeout=10)
    finally:
        producer.close()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("https://images.example.com/cat.png", "host 'images.example.com' not allowed"),
        ("ftp://images.example.com/cat.png", "scheme 'ftp' not allowed"),
        ("../../etc/passwd", "outside the allowed roots"),
    ],
)
def test_submit_refuses_image_sources(tmp_path, source, message):
    (tmp_path / "images").mkdir()
    policy = ImagePolicy(local_roots=(tmp_path / "images",))
    with pytest.raises(PermanentError, match=message):
        build_instruction(
            SubmitRecord(prompt="What is it?", image=source),
            base_dir=tmp_path / "images",
            policy=policy,
            blobs=BlobStore(str(tmp_path / "blobs")),
            registry=None,
        )
