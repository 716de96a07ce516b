"""Prometheus metrics of one runtime, on its own registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["service", "topic"]
        self.consumed = Counter(
            "vlf_messages_consumed", "Messages taken from a topic.", labels, registry=registry
        )
        self.produced = Counter(
            "vlf_messages_produced", "Events acknowledged by the broker.", labels, registry=registry
        )
        self.failed = Counter(
            "vlf_messages_failed", "Handler failures, by error class.", [*labels, "error"], registry=registry
        )
        self.dead_lettered = Counter(
            "vlf_messages_dead_lettered", "Messages sent to the topic's DLQ.", labels, registry=registry
        )
        self.handler_seconds = Histogram(
            "vlf_handler_seconds",
            "Time to handle one message, outputs acknowledged.",
            labels,
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.lag = Gauge(
            "vlf_consumer_lag", "High watermark minus position.", [*labels, "partition"], registry=registry
        )
        self.committed = Gauge(
            "vlf_committed_offset",
            "The group's last offset committed by this replica: next message to read.",
            [*labels, "partition"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "vlf_in_flight", "Messages fetched and not yet finished.", ["service"], registry=registry
        )

    def forget_partition(self, service: str, topic: str, partition: int) -> None:
        """Drop the per-partition series of a partition this replica gave up: its new owner reports
        them, and a stale lag kept here would be summed with the owner's and hold an alert firing."""
        self.lag.remove(service, topic, str(partition))
        self.committed.remove(service, topic, str(partition))
