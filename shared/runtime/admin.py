"""Topic creation and event publishing outside a consumer (CLI, jobs), with the runtime's guarantees."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from shared.contracts.codec import encode
from shared.contracts.events import Event
from shared.contracts.topics import ALL_TOPICS, TopicSpec
from shared.settings import CommonSettings


def ensure_topics(settings: CommonSettings, specs: Iterable[TopicSpec]) -> None:
    """Create each topic and its DLQ if missing (idempotent, safe when replicas race)."""
    ns, rf = settings.topic_namespace, settings.kafka_replication_factor
    wanted: list[NewTopic] = []
    for spec in specs:
        config = {"retention.ms": str(spec.retention_ms)}
        wanted += [
            NewTopic(ns + spec.name, spec.partitions, rf, topic_configs=config),
            NewTopic(ns + spec.dlq, 1, rf),
        ]
    admin = KafkaAdminClient(**settings.kafka_client_config(), request_timeout_ms=30_000)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


class EventPublisher:
    """Publishes events to their registry topics and waits for the broker's acknowledgements."""

    def __init__(self, settings: CommonSettings) -> None:
        self._ns = settings.topic_namespace
        self._by_model = {spec.model: spec for spec in ALL_TOPICS}
        ensure_topics(settings, ALL_TOPICS)
        self._producer = KafkaProducer(**settings.kafka_client_config(), acks="all", linger_ms=5)

    def publish(self, events: list[Event], timeout_s: float = 30) -> None:
        futures = []
        for event in events:
            spec = self._by_model[type(event)]
            futures.append(
                self._producer.send(self._ns + spec.name, key=spec.key(event).encode(), value=encode(event))
            )
        for future in futures:
            future.get(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close(timeout=10)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
