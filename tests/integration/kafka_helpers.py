"""Small helpers for integration tests: raw produce/consume on the real broker, waiting, processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import TopicPartition

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 60, what: str = "condition", poll_s: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


def produce(
    bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]], headers=None
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in messages:
        producer.send(topic, key=key, value=value, headers=headers or [])
    producer.flush()
    producer.close()


def consume_all(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 30) -> list:
    """Every record of a topic from the beginning (no group), waiting for ``expect`` records if given."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1500,
    )
    partitions = consumer.partitions_for_topic(topic) or set()
    from kafka.structs import TopicPartition

    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500)
        for recs in batch.values():
            records.extend(recs)
        if expect is None and not batch:
            break
        if expect is not None and len(records) >= expect:
            break
    consumer.close()
    return records


def service_env(bootstrap: str, namespace: str, ledger_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VLF_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        VLF_TOPIC_NAMESPACE=namespace,
        VLF_LEDGER_URL=ledger_url,
        VLF_COMMIT_INTERVAL_S="0.2",
        VLF_SESSION_TIMEOUT_MS="6000",
        PYTHONPATH=str(REPO_ROOT),
    )
    env.update(extra)
    return env


def start_process(module: str, env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - the process owns it until it exits
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        start_new_session=True,  # its own process group, so a test can kill it with its job processes
    )


def stop_process(process: subprocess.Popen, timeout_s: float = 60) -> int:
    """SIGTERM, as Kubernetes stops a pod, and the exit code once the process is gone."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout_s)


def committed(bootstrap: str, topic: str, group: str) -> int:
    """The group's committed offsets on ``topic``, summed over its partitions."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or []
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in partitions)
    finally:
        consumer.close()
