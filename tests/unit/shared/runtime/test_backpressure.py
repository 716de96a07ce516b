"""The poll loop's bounds (``shared.runtime.intake``): fetched messages go to lanes while fewer than
``max_buffered`` are unfinished, each partition in turn, and a partition's fetching pauses when it
holds ``READ_AHEAD`` fetched messages; and what a revoked partition leaves behind (nothing).

The consumer here is a stand-in that records pauses; the real broker behaviour (no partition starves
while the buffer is full) is tested in ``tests/integration/test_runtime.py``.
"""

import threading
import time
from types import SimpleNamespace

from kafka.structs import TopicPartition

from shared.contracts.topics import INSTRUCTIONS
from shared.runtime.intake import READ_AHEAD, Intake
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition, _Rebalance
from shared.runtime.offsets import OffsetTracker
from shared.settings import CommonSettings

P0, P1, P2 = (TopicPartition("instructions", p) for p in range(3))


class StandInConsumer:
    def __init__(self, assignment: set[TopicPartition]) -> None:
        self._assignment = assignment
        self._paused: set[TopicPartition] = set()
        self.polls = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused -= set(partitions)

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        """Nothing new to fetch: blocks for the timeout as a real one would."""
        self.polls += 1
        time.sleep(timeout_ms / 1000)
        return {}

    def commit(self, offsets: dict) -> None:
        pass

    def highwater(self, tp: TopicPartition) -> None:
        return None  # not fetched yet: no lag to report


class Lanes:
    """Stands in for the lane pool: keeps what it was given; ``finish`` plays a lane finishing."""

    def __init__(self, tracker: OffsetTracker) -> None:
        self.tracker = tracker
        self.given: list = []
        self.intake: Intake | None = None

    def put(self, record: SimpleNamespace) -> None:
        self.given.append(record)

    def finish(self, records: list) -> None:
        assert self.intake is not None
        for record in records:
            self.intake.finished(self.tracker.finished((record.topic, record.partition), record.offset))


def intake_with(max_buffered: int) -> tuple[Intake, Lanes]:
    tracker = OffsetTracker()
    lanes = Lanes(tracker)
    lanes.intake = Intake(max_buffered, tracker, lanes.put, lambda topic, count: None)
    return lanes.intake, lanes


def fetch(intake: Intake, tp: TopicPartition, offsets: range) -> None:
    intake.add({tp: [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o) for o in offsets]})


def test_lanes_get_at_most_max_buffered_unfinished_messages_and_more_as_they_finish():
    intake, lanes = intake_with(max_buffered=12)
    fetch(intake, P0, range(100))
    intake.hand_out()
    assert len(lanes.given) == 12
    intake.hand_out()
    assert len(lanes.given) == 12  # nothing finished: no room
    lanes.finish(lanes.given[:5])
    intake.hand_out()
    assert [r.offset for r in lanes.given] == list(range(17))  # in order, 12 unfinished again
    assert intake.waiting() == 83


def test_each_partition_gets_its_turn_when_the_buffer_has_room_for_one_at_a_time():
    intake, lanes = intake_with(max_buffered=4)
    for tp in (P0, P1, P2):
        fetch(intake, tp, range(100))
    intake.hand_out()  # room for 4: one from each, then the first again
    for _ in range(5):  # then room for one message at a time: the oldest unfinished finishes
        lanes.finish([lanes.given[len(lanes.given) - 4]])
        intake.hand_out()
    partitions = [r.partition for r in lanes.given]
    assert {p: partitions.count(p) for p in range(3)} == {0: 3, 1: 3, 2: 3}


def test_a_partition_pauses_at_its_read_ahead_and_resumes_at_half_of_it():
    intake, lanes = intake_with(max_buffered=10)
    consumer = StandInConsumer({P0, P1})
    fetch(intake, P0, range(READ_AHEAD + 5))
    fetch(intake, P1, range(5))
    intake.hand_out()
    intake.apply_backpressure(consumer)
    while intake.waiting() > READ_AHEAD // 2:
        assert consumer.paused() == {P0}
        lanes.finish(lanes.given[-10:])
        intake.hand_out()
        intake.apply_backpressure(consumer)
    assert consumer.paused() == set()


def test_a_revoked_partitions_fetched_messages_are_dropped_not_handed_out():
    definition = ServiceDefinition(name="t", group_id="t", routes={INSTRUCTIONS.name: lambda event: []})
    runtime = KafkaRuntime(definition, CommonSettings(max_buffered=10))
    runtime._consumer = StandInConsumer({P0, P1})  # type: ignore[assignment]  # commit() only
    lanes = Lanes(runtime._tracker)
    runtime._intake = lanes.intake = Intake(10, runtime._tracker, lanes.put, lambda topic, count: None)
    fetch(runtime._intake, P0, range(20))
    fetch(runtime._intake, P1, range(20))
    runtime._intake.hand_out()
    runtime.stop()  # revoked while stopping: no wait for the lanes
    _Rebalance(runtime).on_partitions_revoked({P0})
    given = len(lanes.given)
    lanes.finish([r for r in lanes.given if r.partition == 1])
    runtime._intake.hand_out()
    assert {r.partition for r in lanes.given[given:]} == {1}
    assert runtime._intake.waiting() == 20 - 5 - 10  # P1: 5 given at first, 10 once the lanes are free


def test_a_revoked_partitions_lag_and_committed_offset_are_no_longer_reported():
    definition = ServiceDefinition(name="t", group_id="t", routes={INSTRUCTIONS.name: lambda event: []})
    runtime = KafkaRuntime(definition, CommonSettings())
    runtime._consumer = StandInConsumer({P0, P1})  # type: ignore[assignment]  # commit() only
    for tp, lag in ((P0, 120), (P1, 7)):
        runtime.metrics.lag.labels("t", tp.topic, str(tp.partition)).set(lag)
        runtime.metrics.committed.labels("t", tp.topic, str(tp.partition)).set(1000)
    runtime.stop()
    _Rebalance(runtime).on_partitions_revoked({P0})
    p0 = {"service": "t", "topic": P0.topic, "partition": "0"}
    assert runtime.registry.get_sample_value("vlf_consumer_lag", p0) is None
    assert runtime.registry.get_sample_value("vlf_committed_offset", p0) is None
    p1 = {**p0, "partition": "1"}
    assert runtime.registry.get_sample_value("vlf_consumer_lag", p1) == 7


def test_with_a_full_buffer_the_loop_waits_for_lanes_instead_of_polling_and_hands_out_at_once():
    definition = ServiceDefinition(name="t", group_id="t", routes={INSTRUCTIONS.name: lambda event: []})
    runtime = KafkaRuntime(definition, CommonSettings(max_buffered=12))
    consumer = StandInConsumer({P0, P1})
    runtime._consumer = consumer  # type: ignore[assignment]  # the loop's calls only
    lanes = Lanes(runtime._tracker)
    runtime._intake = lanes.intake = Intake(12, runtime._tracker, lanes.put, lambda topic, count: None)
    fetch(runtime._intake, P0, range(100))
    loop = threading.Thread(target=runtime._loop, daemon=True)
    loop.start()
    try:
        time.sleep(1.0)
        assert len(lanes.given) == 12
        assert consumer.polls <= 10  # one a POLL_TIMEOUT_MS at most while it waits for room

        lanes.finish(lanes.given[:6])  # down to half: room for six more
        deadline = time.monotonic() + 0.1  # far less than the 200 ms a poll could wait
        while len(lanes.given) < 18 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(lanes.given) == 18
    finally:
        runtime.stop()
        loop.join(timeout=5)
