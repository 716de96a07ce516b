"""Fetched messages on their way from the consumer to the lanes: a read-ahead per partition, handed
out from each partition in turn while the lanes hold fewer than ``max_buffered`` unfinished.

Two bounds, for two reasons. ``max_buffered`` bounds what a rebalance or a stop waits for (messages
given to lanes); ``READ_AHEAD`` bounds memory (fetched messages not yet given), and a partition's
fetching pauses there. They are separate because pausing makes kafka-python's fetcher drop what it
holds for the partition: pausing at a few messages would refetch a whole batch for every few
handled.

Only the poll thread calls ``add``, ``hand_out``, ``apply_backpressure`` and ``drop``; ``finished``
comes from lane and producer threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from kafka.structs import TopicPartition

from shared.runtime.offsets import OffsetTracker

Record = Any  # kafka-python ConsumerRecord: topic, partition and offset are read here

# Fetched messages of one partition held before its fetching pauses (it resumes at half): kafka-
# python's max_poll_records, about one fetch of small events.
READ_AHEAD = 500


class PausableConsumer(Protocol):
    def paused(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...


class Intake:
    def __init__(
        self,
        max_buffered: int,
        tracker: OffsetTracker,
        give: Callable[[Record], None],
        count: Callable[[str, int], None],
    ) -> None:
        """``give(record)`` hands a message to the lanes; ``count(topic, n)`` counts messages given."""
        self._max_buffered = max_buffered
        self._tracker = tracker
        self._give = give
        self._count = count
        self._fetched: dict[TopicPartition, deque[Record]] = {}
        # Set when lanes bring the unfinished messages down to half of ``max_buffered``, so a poll
        # thread waiting with fetched messages and a full buffer hands out more at once.
        self._room = threading.Event()
        self._room_at = max_buffered // 2

    def add(self, batch: dict[TopicPartition, list[Record]]) -> None:
        for tp, records in batch.items():
            self._fetched.setdefault(tp, deque()).extend(records)

    def waiting(self) -> int:
        """Fetched messages not yet given to the lanes."""
        return sum(len(records) for records in self._fetched.values())

    def hand_out(self) -> None:
        """Give fetched messages to the lanes while fewer than ``max_buffered`` are unfinished, taking
        from each partition in turn.

        A partition that was given some goes to the back of the line, so when the buffer has room
        for a few messages at a time, the next few come from the next partitions, not again from the
        first. One buffer for all partitions: a partition that has run dry leaves its room to those
        with a backlog, so the end of a backlog still fills every lane."""
        self._room.clear()
        room = self._max_buffered - self._tracker.in_flight()
        while room > 0 and self._fetched:
            share = max(1, room // len(self._fetched))
            for tp in list(self._fetched):
                records = self._fetched.pop(tp)
                given = min(share, room, len(records))
                for _ in range(given):
                    record = records.popleft()
                    self._tracker.started((tp.topic, tp.partition), record.offset)
                    self._give(record)
                room -= given
                self._count(tp.topic, given)
                if records:
                    self._fetched[tp] = records
                if room == 0:
                    return

    def apply_backpressure(self, consumer: PausableConsumer) -> None:
        """Pause the partitions holding ``READ_AHEAD`` fetched messages, resume those down to half."""
        paused = consumer.paused()
        held = {tp: len(records) for tp, records in self._fetched.items()}
        full = [tp for tp, count in held.items() if count >= READ_AHEAD and tp not in paused]
        drained = [tp for tp in paused if held.get(tp, 0) <= READ_AHEAD // 2]
        if full:
            consumer.pause(*full)
        if drained:
            consumer.resume(*drained)

    def wait_for_room(self, timeout_s: float) -> bool:
        """When fetched messages wait, sleep until lanes have made room for them (or ``timeout_s``)
        and return True; else return False at once."""
        if not self._fetched:
            return False
        self._room.wait(timeout_s)
        return True

    def finished(self, held: int) -> None:
        """A message finished and ``held`` are still unfinished (from any thread)."""
        if held <= self._room_at:
            self._room.set()

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget revoked partitions' fetched messages: never started, the next owner reads them."""
        for tp in partitions:
            self._fetched.pop(tp, None)
