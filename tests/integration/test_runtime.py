"""The Kafka runtime on the real broker, through a real service process (recorder_service)."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from kafka import KafkaProducer

from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import encode
from shared.errors import ContractError
from shared.runtime.dlq import dead_letter, read_dlq_headers
from tests import factories
from tests.integration.kafka_helpers import (
    committed,
    consume_all,
    create_topics,
    produce,
    service_env,
    start_process,
    stop_process,
    wait_until,
)

RECORDER = "tests.integration.recorder_service"


@pytest.fixture(params=["thread-lanes", "async-lanes"])
def lanes(request: pytest.FixtureRequest) -> dict[str, str]:
    """The recorder's handler on lane threads, or as a coroutine on an event loop (``AsyncLanePool``):
    both must keep the runtime's guarantees."""
    return {"RECORDER_ASYNC": "1"} if request.param == "async-lanes" else {}


def _produce_events(bootstrap: str, namespace: str, events: list[ev.Event]) -> None:
    by_topic: dict[str, list] = {}
    for event in events:
        spec = next(s for s in topics.ALL_TOPICS if s.model is type(event))
        by_topic.setdefault(namespace + spec.name, []).append((spec.key(event).encode(), encode(event)))
    for name, messages in by_topic.items():
        spec = topics.topic(name.removeprefix(namespace))
        create_topics(bootstrap, [name, namespace + spec.dlq], partitions=spec.partitions)
        produce(bootstrap, name, messages)


def test_every_event_type_round_trips_to_the_ledger(kafka_bootstrap, namespace, ledger_url, ledger, tmp_path):
    events = factories.one_of_each(1)
    process = start_process(
        RECORDER, service_env(kafka_bootstrap, namespace, ledger_url, VLF_HTTP_PORT="0"), tmp_path / "log"
    )
    try:
        _produce_events(kafka_bootstrap, namespace, events)

        def all_there() -> bool:
            return (
                all(
                    ledger.count(type(e)) == 1
                    for e in events
                    if not isinstance(e, ev.TrainRequest | ev.EvalRequest | ev.TrainProgress | ev.Response)
                )
                and ledger.count(ev.Response) == 2  # the one produced here and the recorder's echo
                and len(ledger.jobs()) == 3
            )

        wait_until(all_there, 60, "every event in the ledger")
    finally:
        assert stop_process(process) == 0, (tmp_path / "log").read_text()
    inst, resp, ann, pair = events[:4]
    assert ledger.instruction(inst.instruction_id) == inst
    assert resp in ledger.responses_for(inst.instruction_id)
    assert ledger.annotations_for(inst.instruction_id) == [ann]
    assert ledger.pairs_for(inst.instruction_id) == [pair]
    assert ledger.job("job-1").request["base_model"] == "tiny"
    assert ledger.job("job-p1").progress["step"] == 3
    assert ledger.job("eval-1").kind == "eval"
    published = consume_all(kafka_bootstrap, namespace + topics.RESPONSES.name, expect=2)
    echoed = [json.loads(r.value) for r in published if json.loads(r.value)["model_id"] == "echo"]
    assert [e["text"] for e in echoed] == [inst.prompt]


def test_poison_messages_are_dead_lettered_and_do_not_block_the_partition(
    kafka_bootstrap, namespace, ledger_url, ledger, tmp_path, lanes
):
    name = namespace + topics.INSTRUCTIONS.name
    create_topics(kafka_bootstrap, [name], partitions=1)
    good = [factories.instruction(i) for i in range(4)]
    key = b"same-key"
    unknown_version = json.loads(encode(good[0]))
    unknown_version["schema_version"] = 42
    missing_field = json.loads(encode(good[0]))
    del missing_field["prompt"]
    messages = [
        (key, encode(good[0])),
        (key, b"{this is not json"),
        (key, encode(good[1])),
        (key, json.dumps(unknown_version).encode()),
        (key, encode(good[2])),
        (key, json.dumps(missing_field).encode()),
        (key, encode(good[3])),
        (key, b"[" * 100_000 + b"]" * 100_000),  # json.loads raises RecursionError, not a JSON error
    ]
    produce(kafka_bootstrap, name, messages, headers=[("trace-id", b"abc")])
    env = service_env(
        kafka_bootstrap,
        namespace,
        ledger_url,
        VLF_HTTP_PORT="0",
        RECORDER_TOPICS=topics.INSTRUCTIONS.name,
        **lanes,
    )
    process = start_process(RECORDER, env, tmp_path / "log")
    try:
        wait_until(lambda: ledger.count(ev.Instruction) == 4, 60, "the valid messages")
        dead = consume_all(kafka_bootstrap, namespace + topics.INSTRUCTIONS.dlq, expect=4)
    finally:
        assert stop_process(process) == 0, (tmp_path / "log").read_text()
    assert len(dead) == 4
    reasons = [read_dlq_headers(r.headers) for r in dead]
    assert [r["error.class"] for r in reasons] == ["ContractError"] * 4
    assert "invalid JSON" in reasons[0]["error.message"]
    assert "unknown schema_version 42" in reasons[1]["error.message"]
    assert "prompt: Field required" in reasons[2]["error.message"]
    assert "nested too deeply" in reasons[3]["error.message"]
    assert [int(r["source.offset"]) for r in reasons] == [1, 3, 5, 7]
    assert all(r["source.topic"] == name and r["service"] == "vlf-recorder" for r in reasons)
    assert [d.value for d in dead] == [messages[1][1], messages[3][1], messages[5][1], messages[7][1]]
    assert all(("trace-id", b"abc") in d.headers for d in dead)


def test_records_other_clients_write_make_letters_the_broker_takes(kafka_bootstrap, namespace):
    """kafka-python refuses to send a record with neither key nor value, or a header without a value;
    a Java client or kcat can write both, and their dead letters used to stop the service instead."""
    name = namespace + "letters"
    create_topics(kafka_bootstrap, [name], partitions=1)
    record = factories.consumer_record(
        namespace + topics.INSTRUCTIONS.name, 7, [("trace-id", None)], key=None, value=None
    )
    letter = dead_letter(record, service="vlf-test", error=ContractError("empty message"), attempts=1)

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(name, key=letter.key, value=letter.value, headers=letter.headers).get(timeout=30)
    finally:
        producer.close()

    [stored] = consume_all(kafka_bootstrap, name, expect=1)
    assert stored.key is None and stored.value == b""
    assert ("trace-id", b"") in stored.headers
    assert read_dlq_headers(stored.headers)["error.message"] == "empty message"
    assert read_dlq_headers(stored.headers)["source.offset"] == "7"


def test_sigkill_between_ledger_write_and_commit_loses_and_duplicates_nothing(
    kafka_bootstrap, namespace, ledger_url, ledger, tmp_path, lanes
):
    events = [factories.instruction(i) for i in range(30)]
    _produce_events(kafka_bootstrap, namespace, events)
    env = service_env(
        kafka_bootstrap,
        namespace,
        ledger_url,
        VLF_HTTP_PORT="0",
        RECORDER_TOPICS=topics.INSTRUCTIONS.name,
        **lanes,
    )
    killed = start_process(RECORDER, {**env, "RECORDER_KILL_AFTER": "10"}, tmp_path / "log")
    assert killed.wait(timeout=90) == -signal.SIGKILL
    assert ledger.count(ev.Instruction) >= 10
    process = start_process(RECORDER, env, tmp_path / "log")
    try:
        wait_until(lambda: ledger.count(ev.Instruction) == 30, 90, "all instructions after the restart")
        wait_until(lambda: _committed(kafka_bootstrap, namespace) == 30, 30, "offsets committed to the end")
    finally:
        assert stop_process(process) == 0, (tmp_path / "log").read_text()

    def answered() -> set[str]:
        echoed = consume_all(kafka_bootstrap, namespace + topics.RESPONSES.name, expect=30)
        return {json.loads(r.value)["instruction"]["instruction_id"] for r in echoed}

    # Redelivered messages may publish their answer again (at least once); none may be missing.
    wait_until(lambda: answered() == {e.instruction_id for e in events}, 30, "an answer to every instruction")


def _committed(bootstrap: str, namespace: str, group: str = "vlf-recorder") -> int:
    return committed(bootstrap, namespace + topics.INSTRUCTIONS.name, group)


def test_sigterm_mid_stream_exits_cleanly_without_loss_or_duplicates(
    kafka_bootstrap, namespace, ledger_url, ledger, tmp_path, lanes
):
    events = [factories.instruction(i) for i in range(300)]
    _produce_events(kafka_bootstrap, namespace, events)
    env = service_env(
        kafka_bootstrap,
        namespace,
        ledger_url,
        VLF_HTTP_PORT="0",
        RECORDER_TOPICS=topics.INSTRUCTIONS.name,
        **lanes,
        RECORDER_DELAY_S="0.05",
        VLF_MAX_IN_FLIGHT="4",
    )
    process = start_process(RECORDER, env, tmp_path / "log")
    wait_until(lambda: ledger.count(ev.Instruction) >= 20, 60, "some progress")
    assert stop_process(process) == 0, (tmp_path / "log").read_text()
    assert ledger.count(ev.Instruction) < 300, "stopped too late to test anything"
    process = start_process(RECORDER, env, tmp_path / "log")
    try:
        wait_until(lambda: ledger.count(ev.Instruction) == 300, 90, "the rest after the restart")
        wait_until(lambda: _committed(kafka_bootstrap, namespace) == 300, 30, "offsets committed to the end")
    finally:
        assert stop_process(process) == 0, (tmp_path / "log").read_text()
    echoed = consume_all(kafka_bootstrap, namespace + topics.RESPONSES.name, expect=300)
    ids = [json.loads(r.value)["response_id"] for r in echoed]
    assert len(ids) == 300 and len(set(ids)) == 300


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_a_broken_background_task_stops_the_service_loudly(kafka_bootstrap, namespace, ledger_url, tmp_path):
    """A timer that raised must not leave the service running without it (and looking healthy)."""
    env = service_env(kafka_bootstrap, namespace, ledger_url, VLF_HTTP_PORT="0")
    env["RECORDER_BACKGROUND_FAILS_AFTER_S"] = "3"
    process = start_process(RECORDER, env, tmp_path / "log")
    try:
        assert process.wait(timeout=90) != 0
    finally:
        process.kill()
    log = (tmp_path / "log").read_text()
    assert "background task crashed" in log and "the recorder's background task broke" in log


def test_probes_report_real_state_and_readiness_follows_the_broker(namespace, ledger_url, ledger, tmp_path):
    from devkit.kafka_local import BrokerConfig, free_ports, start_broker, stop_broker

    cfg = BrokerConfig(port=free_ports(2), data_dir=tmp_path / "own-kafka")
    bootstrap = start_broker(cfg)
    http_port = free_ports()
    env = service_env(
        bootstrap,
        namespace,
        ledger_url,
        VLF_HTTP_PORT=str(http_port),
        RECORDER_TOPICS=topics.INSTRUCTIONS.name,
    )
    process = start_process(RECORDER, env, tmp_path / "log")
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: _get(base + "/readyz") == 200, 60, "readiness")
        assert _get(base + "/healthz") == 200
        _produce_events(bootstrap, namespace, [factories.instruction(i) for i in range(5)])
        wait_until(lambda: ledger.count(ev.Instruction) == 5, 60, "messages handled")
        wait_until(
            lambda: _metric(httpx.get(base + "/metrics").text, "vlf_messages_produced_total") == 5,
            30,
            "metrics",
        )
        metrics = httpx.get(base + "/metrics").text
        assert _metric(metrics, "vlf_messages_consumed_total") == 5
        assert "vlf_handler_seconds_bucket" in metrics
        info = httpx.get(base + "/info").json()
        assert info["group_id"] == "vlf-recorder" and info["consumes"] == [topics.INSTRUCTIONS.name]
        stop_broker(cfg)
        wait_until(lambda: _get(base + "/readyz") == 503, 60, "readiness to fail without the broker")
        assert httpx.get(base + "/readyz").json()["checks"]["kafka"] != "ok"
        assert _get(base + "/healthz") == 200
        start_broker(cfg)
        wait_until(lambda: _get(base + "/readyz") == 200, 90, "readiness to come back with the broker")
    finally:
        assert stop_process(process) == 0, (tmp_path / "log").read_text()
        stop_broker(cfg)


def test_a_standby_member_without_partitions_is_ready_and_takes_over(
    kafka_bootstrap, namespace, ledger_url, ledger, tmp_path
):
    """Two members of one group on the one-partition train topic, as during a Deployment's rolling
    update: the member without a partition is healthy and Ready (a readiness that needed a partition
    kept the surge pod unready, and `helm upgrade --wait` timed out), and it takes the partition
    over when the holder stops."""
    from devkit.kafka_local import free_ports

    ports = [free_ports() for _ in range(2)]
    env = service_env(kafka_bootstrap, namespace, ledger_url, RECORDER_TOPICS=topics.TRAIN_REQUESTS.name)
    members = [
        start_process(RECORDER, {**env, "VLF_HTTP_PORT": str(port)}, tmp_path / f"log-{port}")
        for port in ports
    ]
    bases = [f"http://127.0.0.1:{port}" for port in ports]

    def assignments() -> list[list[str]]:
        return [httpx.get(base + "/info", timeout=5).json()["assignment"] for base in bases]

    try:
        wait_until(lambda: all(_get(base + "/readyz") == 200 for base in bases), 60, "both members ready")
        wait_until(lambda: sorted(map(len, assignments())) == [0, 1], 60, "one partition, one holder")
        holder = next(i for i, assigned in enumerate(assignments()) if assigned)
        standby = 1 - holder
        assert _get(bases[standby] + "/readyz") == 200, httpx.get(bases[standby] + "/readyz").text
        assert stop_process(members[holder]) == 0
        wait_until(
            lambda: (
                httpx.get(bases[standby] + "/info", timeout=5).json()["assignment"]
                == [namespace + topics.TRAIN_REQUESTS.name + ":0"]
            ),
            60,
            "the standby to take the partition over",
        )
    finally:
        for member in members:
            if member.poll() is None:
                stop_process(member)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_a_full_buffer_never_starves_a_partition(kafka_bootstrap, namespace, ledger_url):
    """Every partition has a backlog and the handler is slower than the fetcher: each partition
    must still make progress (pausing all partitions when the buffer filled starved the last one)."""
    import threading
    import time

    from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
    from shared.settings import CommonSettings

    name = namespace + topics.INSTRUCTIONS.name
    create_topics(kafka_bootstrap, [name, name + ".dlq"], partitions=6)
    events = [factories.instruction(i) for i in range(1200)]
    produce(kafka_bootstrap, name, [(topics.INSTRUCTIONS.key(e).encode(), encode(e)) for e in events])
    handled: dict[int, int] = {}
    lock = threading.Lock()

    def slow(event: ev.Instruction) -> list[ev.Event]:
        time.sleep(0.004)
        return []

    settings = CommonSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_namespace=namespace,
        ledger_url=ledger_url,
        max_in_flight=2,
        max_buffered=12,
    )
    definition = ServiceDefinition(
        name="fairness", group_id=f"{namespace}fairness", routes={topics.INSTRUCTIONS.name: slow}, produces=()
    )
    runtime = KafkaRuntime(definition, settings)
    original = runtime.process

    def counting(record) -> None:  # noqa: ANN001
        with lock:
            handled[record.partition] = handled.get(record.partition, 0) + 1
        original(record)

    runtime.process = counting
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: sum(handled.values()) >= 400, 120, "a third of the backlog handled")
        with lock:
            per_partition = dict(handled)
    finally:
        runtime.stop()
        thread.join(timeout=60)
    assert sorted(per_partition) == list(range(6)), f"partitions never served: {per_partition}"
    assert min(per_partition.values()) >= 20, per_partition
