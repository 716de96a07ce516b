"""Fail loudly when a consumer group stops committing while it has lag.

kafka-python consumers have been seen to sit silent after a broker restart or a rebalance, with lag
and no error. The chaos suite samples every group's committed offsets against the end offsets
(once a second); a partition that has lag and whose committed offset did not move for longer than
``bound_s`` raises ``ConsumerStalled`` naming the group, partition, lag and how long it waited.
The clock of a group starts again when its service is restarted (and for every group when the
broker is): time spent dead or rejoining after a SIGKILL is the plan's doing, not a stall.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition


class ConsumerStalled(AssertionError):
    """A consumer group kept lag on a partition without committing any progress."""


@dataclass(frozen=True)
class PartitionLag:
    group: str
    partition: TopicPartition
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass
class _Progress:
    committed: int
    since: float


class StallTracker:
    """Pure bookkeeping: when did each (group, partition) last commit progress while lagging?"""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self._progress: dict[tuple[str, TopicPartition], _Progress] = {}
        self._restarted: dict[str | None, float] = {}  # group (None: all) -> when its clock restarted

    def restarted(self, group: str | None, now: float) -> None:
        """``group``'s consumer (None: the broker) was restarted at ``now``; safe from another thread."""
        self._restarted[group] = now

    def observe(self, lags: list[PartitionLag], now: float) -> None:
        """Record one sample; raise ``ConsumerStalled`` for the longest-stalled lagging partition."""
        stalled = []
        for lag in lags:
            key = (lag.group, lag.partition)
            seen = self._progress.get(key)
            if seen is None or lag.committed != seen.committed or lag.lag == 0:
                self._progress[key] = _Progress(lag.committed, now)
            else:
                since = max(seen.since, self._restarted.get(lag.group, 0.0), self._restarted.get(None, 0.0))
                if now - since > self.bound_s:
                    stalled.append((now - since, lag))
        if stalled:
            waited, lag = max(stalled, key=lambda s: s[0])
            raise ConsumerStalled(
                f"consumer group {lag.group!r} stalled on {lag.partition.topic}[{lag.partition.partition}]: "
                f"lag {lag.lag} (committed {lag.committed}, end {lag.end}) with no committed progress "
                f"for {waited:.0f}s (bound {self.bound_s:.0f}s); {len(stalled)} stalled partition(s)"
            )


class StallDetector:
    """Samples ``groups`` (group id -> topics it consumes) on a real broker; see the module docstring."""

    def __init__(self, bootstrap: str, groups: dict[str, list[str]], bound_s: float = 60.0) -> None:
        self.bootstrap = bootstrap
        self.groups = groups
        self.tracker = StallTracker(bound_s)
        self._admin: KafkaAdminClient | None = None
        self._consumer: KafkaConsumer | None = None

    def lags(self) -> list[PartitionLag]:
        """Committed vs end offset of every partition of every watched group (never-committed = 0)."""
        admin, consumer = self._clients()
        out = []
        for group, topics in self.groups.items():
            committed = admin.list_consumer_group_offsets(group)
            partitions = [
                TopicPartition(name, p)
                for name in topics
                for p in sorted(consumer.partitions_for_topic(name) or [])
            ]
            ends = consumer.end_offsets(partitions) if partitions else {}
            for tp in partitions:
                offset = committed.get(tp)
                out.append(
                    PartitionLag(group, tp, offset.offset if offset and offset.offset >= 0 else 0, ends[tp])
                )
        return out

    def sample(self) -> list[PartitionLag] | None:
        """One sample; None when the broker did not answer (an outage is not a stall by itself)."""
        try:
            lags = self.lags()
        except KafkaError:
            self.close()  # reconnect from scratch next time
            return None
        self.tracker.observe(lags, time.monotonic())
        return lags

    def total_lag(self) -> int | None:
        lags = self.sample()
        return None if lags is None else sum(lag.lag for lag in lags)

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                with contextlib.suppress(KafkaError):
                    client.close()
        self._admin = self._consumer = None

    def _clients(self) -> tuple[KafkaAdminClient, KafkaConsumer]:
        if self._admin is None or self._consumer is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False, request_timeout_ms=15_000
            )
        return self._admin, self._consumer
