"""Which offset may be committed, when messages of a partition finish out of order.

Messages are handed to worker lanes concurrently; a partition's committable offset is one past the
last message of the unbroken run of finished messages from the oldest one. So a slow message holds
back the commit of faster ones behind it, and a crash never skips an unfinished message.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

TopicPartitionKey = tuple[str, int]


@dataclass
class _PartitionOffsets:
    pending: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    committable: int | None = None


class OffsetTracker:
    """Thread-safe: the poll thread adds offsets, worker threads mark them done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[TopicPartitionKey, _PartitionOffsets] = {}
        self._held = 0  # pending offsets over all partitions

    def started(self, tp: TopicPartitionKey, offset: int) -> None:
        with self._lock:
            self._partitions.setdefault(tp, _PartitionOffsets()).pending.append(offset)
            self._held += 1

    def finished(self, tp: TopicPartitionKey, offset: int) -> int:
        """Mark an offset done; returns how many messages (of every partition) are still held."""
        with self._lock:
            part = self._partitions.get(tp)
            if part is None:  # partition revoked meanwhile; its new owner re-processes the message
                return self._held
            part.done.add(offset)
            while part.pending and part.pending[0] in part.done:
                first = part.pending.popleft()
                part.done.discard(first)
                part.committable = first + 1
                self._held -= 1
            return self._held

    def take_committable(self) -> dict[TopicPartitionKey, int]:
        """Offsets to commit now (each partition at most once until it advances again)."""
        with self._lock:
            ready = {tp: p.committable for tp, p in self._partitions.items() if p.committable is not None}
            for part in self._partitions.values():
                part.committable = None
            return ready

    def in_flight(self) -> int:
        """Messages started and not yet committable: a finished one behind an unfinished one counts."""
        with self._lock:
            return self._held

    def forget(self, tps: list[TopicPartitionKey]) -> None:
        with self._lock:
            for tp in tps:
                part = self._partitions.pop(tp, None)
                if part is not None:
                    self._held -= len(part.pending)
