"""Messages per second through the Kafka runtime against a plain kafka-python loop (issue 2).

Every variant reads the same N pre-loaded instructions from its own topics on the same broker,
answers each with one response event, publishes it and commits (manual commits everywhere):

- ``runtime+ledger``: ``KafkaRuntime`` (lanes, ordered commits, acked publishes) whose handler
  writes the instruction and its response to a SQLite ledger, as every real service does;
- ``runtime+postgres``: the same on PostgreSQL (a throwaway local server), when it is installed;
- ``runtime``: the same without the ledger writes: the runtime's own cost;
- ``plain``: one kafka-python consumer and producer in a loop (poll, decode, same handler, send,
  flush, commit per batch): the ceiling the client library allows.

The clock starts at the first handled message (group join excluded) and stops when the committed
offsets cover all N (the runtime's ``vlf_committed_offset`` gauge, read in-process). Run:
``python -m bench.bench_runtime [--messages 5000]``; a broker is started for the run unless
``--bootstrap`` names one.
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

from devkit.kafka_local import KAFKA_VERSION, BrokerConfig, free_ports, start_broker, stop_broker
from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import decode, encode
from shared.ledger import Ledger
from shared.runtime.admin import ensure_topics
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.settings import CommonSettings
from tests.factories import echo_response
from tests.postgres_server import postgres_bin_dir, postgres_server


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


class Clock:
    """Starts at the first handled message."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._lock = threading.Lock()

    def tick(self) -> None:
        if self.first is None:
            with self._lock:
                self.first = self.first or time.monotonic()


def committed_total(runtime: KafkaRuntime) -> int:
    """Offsets the runtime committed, from its ``vlf_committed_offset`` gauge: asking the broker
    (a consumer per look) ran in the measured process and took a third of its busy CPU."""
    return int(
        sum(sample.value for metric in runtime.metrics.committed.collect() for sample in metric.samples)
    )


def wait_committed(runtime: KafkaRuntime, count: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while committed_total(runtime) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the runtime did not commit {count} messages within {timeout_s:.0f}s")
        time.sleep(0.02)
    return time.monotonic()


def run_runtime(bootstrap: str, count: int, ledger_url: str | None) -> float:
    """Messages/s through ``KafkaRuntime``; with a ledger at ``ledger_url`` when one is given."""
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_namespace=f"bench{uuid.uuid4().hex[:8]}.",
        # The clock stops at the commit that covers the last message: at the default 1 s interval
        # that alone added up to a second to runs of a few seconds.
        commit_interval_s=0.05,
    )
    preload(settings, count)
    ledger = Ledger(ledger_url) if ledger_url else None
    if ledger is not None:
        ledger.migrate()
    clock = Clock()

    def handle(event: ev.Instruction) -> list[ev.Event]:
        clock.tick()
        response = echo_response(event)
        if ledger is not None:
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
    end = wait_committed(runtime, count, timeout_s=600)
    runtime.stop()
    thread.join(timeout=60)
    if ledger is not None:
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


def postgres_or_none() -> contextlib.AbstractContextManager[str | None]:
    """A throwaway PostgreSQL server (tests/postgres_server.py) when its binaries are installed."""
    try:
        postgres_bin_dir()
    except RuntimeError:
        return contextlib.nullcontext(None)
    return postgres_server()


def main(
    messages: int = typer.Option(5000, help="Messages per variant."),
    bootstrap: str | None = typer.Option(None, help="Use this broker instead of starting one."),
) -> None:
    """Print messages/s of each variant and the runtime/plain ratios."""
    with (
        local_broker(bootstrap) as address,
        tempfile.TemporaryDirectory() as work,
        postgres_or_none() as postgres_url,
    ):
        print(
            f"kafka-python {kafka.__version__}; broker {broker_version(address)} (local jar {KAFKA_VERSION})"
        )
        runs: dict[str, Callable[[], float]] = {
            "plain": lambda: run_plain(address, messages),
            "runtime": lambda: run_runtime(address, messages, None),
            "runtime+ledger": lambda: run_runtime(address, messages, f"sqlite:///{Path(work) / 'ledger.db'}"),
        }
        if postgres_url:
            runs["runtime+postgres"] = lambda: run_runtime(address, messages, postgres_url)
        rates = {name: run() for name, run in runs.items()}
        for name, rate in rates.items():
            print(f"{name:>16}: {rate:8.1f} msg/s   ({messages} messages)")
        for name in list(rates)[1:]:
            print(f"{name + ' / plain':>24} = {rates[name] / rates['plain']:.3f}")
        if not postgres_url:
            print("runtime+postgres: skipped, no PostgreSQL binaries (Debian's postgresql package)")
        else:
            print("(PostgreSQL: the tests' throwaway server, loopback, fsync off)")


if __name__ == "__main__":
    typer.run(main)
