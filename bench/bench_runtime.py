"""Messages per second through the Kafka runtime against a plain kafka-python loop (issue 2).

Every variant reads the same N pre-loaded instructions from its own topics on the same broker,
answers each with one response event, publishes it and commits (manual commits everywhere):

- ``runtime+ledger``: ``KafkaRuntime`` (lanes, ordered commits, acked publishes) whose handler
  writes the instruction and its response to a SQLite ledger, as every real service does;
- ``runtime``: the same without the ledger writes: the runtime's own cost;
- ``plain``: one kafka-python consumer and producer in a loop (poll, decode, same handler, send,
  flush, commit per batch): the ceiling the client library allows.

The clock starts at the first handled message (group join excluded) and stops when the group's
committed offsets cover all N. Run: ``python -m bench.bench_runtime [--messages 5000]``; a broker is
started for the run unless ``--bootstrap`` names one.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kafka
import typer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from devkit.kafka_local import KAFKA_VERSION, BrokerConfig, free_ports, start_broker, stop_broker
from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import decode, encode
from shared.ledger import Ledger
from shared.runtime.admin import ensure_topics
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.settings import CommonSettings
from tests.factories import echo_response


@contextlib.contextmanager
def local_broker(bootstrap: str | None) -> Iterator[str]:
    """The named broker, or a fresh one in a temporary data dir, stopped afterwards."""
    if bootstrap:
        yield bootstrap
        return
    with tempfile.TemporaryDirectory(prefix="vlf-bench-kafka-") as data_dir:
        cfg = BrokerConfig(port=free_ports(2), data_dir=Path(data_dir))
        try:
            yield start_broker(cfg)
        finally:
            stop_broker(cfg)


def broker_version(bootstrap: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return ".".join(str(part) for part in admin._client.check_version())  # kafka-python's API probe
    finally:
        admin.close()


def preload(settings: CommonSettings, count: int) -> None:
    ensure_topics(settings, [topics.INSTRUCTIONS, topics.RESPONSES])
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=20)
    name = settings.topic_namespace + topics.INSTRUCTIONS.name
    for n in range(count):
        inst = ev.Instruction(instruction_id=f"{n:08x}-bench", prompt=f"Benchmark instruction {n}")
        producer.send(name, key=inst.instruction_id.encode(), value=encode(inst))
    producer.flush()
    producer.close()


def committed_total(bootstrap: str, group: str, topic_name: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic_name) or set()
        return sum(consumer.committed(TopicPartition(topic_name, p)) or 0 for p in parts)
    finally:
        consumer.close()


class Clock:
    """Starts at the first handled message."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._lock = threading.Lock()

    def tick(self) -> None:
        if self.first is None:
            with self._lock:
                self.first = self.first or time.monotonic()


def wait_committed(bootstrap: str, group: str, topic_name: str, count: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while committed_total(bootstrap, group, topic_name) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{group} did not commit {count} messages within {timeout_s:.0f}s")
        time.sleep(0.1)
    return time.monotonic()


def run_runtime(bootstrap: str, count: int, with_ledger: bool, work_dir: Path) -> float:
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_namespace=f"bench{uuid.uuid4().hex[:8]}.",
        ledger_url=f"sqlite:///{work_dir / f'ledger-{uuid.uuid4().hex[:6]}.db'}",
    )
    preload(settings, count)
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    clock = Clock()

    def handle(event: ev.Instruction) -> list[ev.Event]:
        clock.tick()
        response = echo_response(event)
        if with_ledger:
            ledger.record(event, response)
        return [response]

    definition = ServiceDefinition(
        name="bench",
        group_id="bench-runtime",
        routes={topics.INSTRUCTIONS.name: handle},
        produces=(topics.RESPONSES,),
    )
    runtime = KafkaRuntime(definition, settings)
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    name = settings.topic_namespace + topics.INSTRUCTIONS.name
    end = wait_committed(bootstrap, "bench-runtime", name, count, timeout_s=600)
    runtime.stop()
    thread.join(timeout=60)
    ledger.close()
    assert clock.first is not None
    return (count - 1) / (end - clock.first)


def run_plain(bootstrap: str, count: int) -> float:
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap, topic_namespace=f"bench{uuid.uuid4().hex[:8]}."
    )
    preload(settings, count)
    ns = settings.topic_namespace
    consumer = KafkaConsumer(
        ns + topics.INSTRUCTIONS.name,
        bootstrap_servers=bootstrap,
        group_id="bench-plain",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    clock = Clock()
    done = 0
    while done < count:
        batch = consumer.poll(timeout_ms=200, max_records=500)
        for records in batch.values():
            for record in records:
                clock.tick()
                response = echo_response(decode(topics.INSTRUCTIONS, record.value))
                producer.send(ns + topics.RESPONSES.name, key=record.key, value=encode(response))
                done += 1
        if batch:
            producer.flush()
            consumer.commit()
    end = time.monotonic()
    consumer.close()
    producer.close()
    assert clock.first is not None
    return (count - 1) / (end - clock.first)


def main(
    messages: int = typer.Option(5000, help="Messages per variant."),
    bootstrap: str | None = typer.Option(None, help="Use this broker instead of starting one."),
) -> None:
    """Print messages/s of each variant and the runtime/plain ratios."""
    with local_broker(bootstrap) as address, tempfile.TemporaryDirectory() as work:
        print(
            f"kafka-python {kafka.__version__}; broker {broker_version(address)} (local jar {KAFKA_VERSION})"
        )
        runs: dict[str, Callable[[], float]] = {
            "plain": lambda: run_plain(address, messages),
            "runtime": lambda: run_runtime(address, messages, False, Path(work)),
            "runtime+ledger": lambda: run_runtime(address, messages, True, Path(work)),
        }
        rates = {name: run() for name, run in runs.items()}
        for name, rate in rates.items():
            print(f"{name:>15}: {rate:8.1f} msg/s   ({messages} messages)")
        print(f"runtime / plain        = {rates['runtime'] / rates['plain']:.3f}")
        print(f"runtime+ledger / plain = {rates['runtime+ledger'] / rates['plain']:.3f}")


if __name__ == "__main__":
    typer.run(main)
