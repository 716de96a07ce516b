"""The local broker manager against a real broker: start, serve a consumer group, restart, keep offsets."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from devkit.kafka_local import (
    BrokerConfig,
    BrokerError,
    broker_running,
    fetch_jars,
    free_ports,
    port_bindable,
    restart_broker,
    start_broker,
    stop_broker,
)

TOPIC = "vlf.test.kafka-local.v1"
GROUP = "vlf-test-kafka-local"


def poll_until(consumer: KafkaConsumer, count: int, timeout_s: float = 30) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(record.value for record in records)
    return values


def committed_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {tp: meta.offset for tp, meta in admin.list_consumer_group_offsets(GROUP).items()}
    finally:
        admin.close()


@pytest.fixture
def broker_config(tmp_path: Path) -> Iterator[BrokerConfig]:
    cfg = BrokerConfig(port=free_ports(2), data_dir=tmp_path / "kafka")
    yield cfg
    stop_broker(cfg)


def test_fetch_is_cached_after_the_first_call(broker_config: BrokerConfig) -> None:
    libs = fetch_jars(broker_config)
    jars_before = {jar.name: jar.stat().st_mtime_ns for jar in libs.glob("*.jar")}

    assert fetch_jars(broker_config) == libs

    # Nothing rewritten: the second fetch did not run Maven.
    assert {jar.name: jar.stat().st_mtime_ns for jar in libs.glob("*.jar")} == jars_before
    assert f"kafka_2.13-{broker_config.version}.jar" in jars_before
    assert any(name.startswith("log4j-slf4j-impl-") for name in jars_before)


def test_committed_offsets_and_topics_survive_a_restart(broker_config: BrokerConfig) -> None:
    started = time.monotonic()
    bootstrap = start_broker(broker_config)
    print(f"start to ready: {time.monotonic() - started:.1f}s")
    assert bootstrap == f"127.0.0.1:{broker_config.port}"
    assert broker_running(broker_config)
    pid = broker_config.pid_file.read_text()
    assert start_broker(broker_config) == bootstrap
    assert broker_config.pid_file.read_text() == pid, "up on a healthy broker must be a no-op"

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(TOPIC, key=b"i-1", value=b"first").get(timeout=30)

    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    assert poll_until(consumer, 1) == [b"first"]
    consumer.commit()
    consumer.close()
    producer.close()

    restarted = time.monotonic()
    assert restart_broker(broker_config) == bootstrap
    print(f"restart to ready: {time.monotonic() - restarted:.1f}s")

    assert committed_offsets(bootstrap) == {TopicPartition(TOPIC, 0): 1}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(TOPIC, key=b"i-2", value=b"second").get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    assert poll_until(consumer, 1) == [b"second"], "the group must resume after its committed offset"
    consumer.close()


def test_stop_ends_the_process_and_frees_the_port(broker_config: BrokerConfig) -> None:
    start_broker(broker_config)

    stop_broker(broker_config)

    assert not broker_running(broker_config)
    assert not broker_config.pid_file.exists()
    assert port_bindable(broker_config.port)
    stop_broker(broker_config)  # stopping a stopped broker is harmless


def test_a_broker_that_dies_at_start_up_reports_its_log(broker_config: BrokerConfig) -> None:
    broker_config.log_dir.mkdir(parents=True)
    (broker_config.log_dir / "meta.properties").write_text(
        "version=1\nnode.id=2\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\ndirectory.id=AAAAAAAAAAAAAAAAAAAAAQ\n"
    )

    with pytest.raises(BrokerError, match="exited with code") as raised:
        start_broker(broker_config)

    assert "node" in str(raised.value).lower(), "the error must show the broker's own complaint"
    assert not broker_running(broker_config)


def test_vlf_kafka_status_says_whether_the_broker_serves(broker_config: BrokerConfig) -> None:
    env = os.environ | {
        "VLF_KAFKA_PORT": str(broker_config.port),
        "VLF_KAFKA_DATA_DIR": str(broker_config.data_dir),
    }

    def status() -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "vlf.cli", "kafka", "status"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    before = status()
    start_broker(broker_config)
    running = status()
    stop_broker(broker_config)
    after = status()

    assert before.returncode == 1 and "vlf kafka up" in before.stderr
    assert running.returncode == 0 and f"ready on 127.0.0.1:{broker_config.port}" in running.stdout
    assert after.returncode == 1
