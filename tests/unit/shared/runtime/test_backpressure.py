"""Per-partition pause and resume of the poll loop (``KafkaRuntime._apply_backpressure``).

The consumer here is a stand-in that only records pauses; the real broker behaviour (no partition
starves while the buffer is full) is tested in ``tests/integration/test_runtime.py``.
"""

import threading
import time
from types import SimpleNamespace

from kafka.structs import TopicPartition

from shared.contracts.topics import INSTRUCTIONS
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.settings import CommonSettings

P0, P1 = TopicPartition("instructions", 0), TopicPartition("instructions", 1)


class PausingConsumer:
    def __init__(self, assignment: set[TopicPartition]) -> None:
        self._assignment = assignment
        self._paused: set[TopicPartition] = set()
        self.highwaters: dict[TopicPartition, int] = {}  # none: not fetched yet
        self.positions: dict[TopicPartition, int] = {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def position(self, tp: TopicPartition, timeout_ms: int) -> int | None:
        return self.positions.get(tp)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused -= set(partitions)


def runtime_holding(max_buffered: int) -> tuple[KafkaRuntime, PausingConsumer]:
    definition = ServiceDefinition(name="t", group_id="t", routes={INSTRUCTIONS.name: lambda event: []})
    runtime = KafkaRuntime(definition, CommonSettings(max_buffered=max_buffered))
    consumer = PausingConsumer({P0, P1})
    runtime._consumer = consumer  # type: ignore[assignment]  # only the pause API is used
    return runtime, consumer


def hold(runtime: KafkaRuntime, tp: TopicPartition, offsets: range) -> None:
    for offset in offsets:
        runtime._tracker.started((tp.topic, tp.partition), offset)


def finish(runtime: KafkaRuntime, tp: TopicPartition, offsets: range) -> None:
    for offset in offsets:
        runtime._tracker.finished((tp.topic, tp.partition), offset)


def test_a_partition_pauses_at_its_share_and_resumes_at_half_of_it():
    runtime, consumer = runtime_holding(max_buffered=12)  # two partitions: a share of 6 each
    hold(runtime, P0, range(5))
    assert runtime._apply_backpressure() == set()
    hold(runtime, P0, range(5, 6))
    assert runtime._apply_backpressure() == {P0}
    assert consumer.paused() == {P0}
    finish(runtime, P0, range(2))  # 4 held: above half the share, still paused
    assert runtime._apply_backpressure() == {P0}
    assert consumer.paused() == {P0}
    finish(runtime, P0, range(2, 3))  # 3 held: half the share, fetch again
    assert runtime._apply_backpressure() == set()
    assert consumer.paused() == set()


def test_one_full_partition_never_pauses_another():
    runtime, consumer = runtime_holding(max_buffered=12)
    hold(runtime, P0, range(6))
    hold(runtime, P1, range(5))
    runtime._apply_backpressure()
    assert consumer.paused() == {P0}
    hold(runtime, P1, range(5, 6))
    finish(runtime, P0, range(6))
    runtime._apply_backpressure()
    assert consumer.paused() == {P1}


def test_a_partition_with_nothing_left_gives_its_share_to_the_others():
    runtime, consumer = runtime_holding(max_buffered=12)
    consumer.highwaters = {P0: 500, P1: 200}
    consumer.positions = {P0: 300, P1: 200}  # P1 caught up
    hold(runtime, P1, range(199, 200))  # ... but still holds its last message: it keeps its share
    hold(runtime, P0, range(294, 300))
    assert runtime._apply_backpressure() == {P0}
    finish(runtime, P1, range(199, 200))  # P1 done: all 12 are P0's
    finish(runtime, P0, range(294, 295))
    assert runtime._apply_backpressure() == set()
    hold(runtime, P0, range(300, 306))
    assert runtime._apply_backpressure() == set()
    hold(runtime, P0, range(306, 307))  # 12 held: its whole share
    assert runtime._apply_backpressure() == {P0}
    consumer.highwaters[P1] = 260  # new messages for P1: a share of 6 each again
    finish(runtime, P0, range(295, 301))  # 6 held: above half of the new share, still paused
    assert runtime._apply_backpressure() == {P0}
    finish(runtime, P0, range(301, 304))  # 3 held: half of it
    assert runtime._apply_backpressure() == set()


class PollCountingConsumer(PausingConsumer):
    """Also polls (nothing to fetch; it blocks for the timeout as a real one would) and counts polls."""

    def __init__(self, assignment: set[TopicPartition]) -> None:
        super().__init__(assignment)
        self.polls = 0

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        self.polls += 1
        time.sleep(timeout_ms / 1000)
        return {}

    def commit(self, offsets: dict) -> None:
        pass


def test_with_every_partition_paused_the_loop_waits_for_lanes_instead_of_polling_and_resumes_at_once():
    definition = ServiceDefinition(name="t", group_id="t", routes={INSTRUCTIONS.name: lambda event: []})
    runtime = KafkaRuntime(definition, CommonSettings(max_buffered=12))
    consumer = PollCountingConsumer({P0, P1})
    runtime._consumer = consumer  # type: ignore[assignment]  # the loop's calls only
    hold(runtime, P0, range(6))
    hold(runtime, P1, range(6))
    loop = threading.Thread(target=runtime._loop, daemon=True)
    loop.start()
    try:
        time.sleep(1.0)
        assert consumer.paused() == {P0, P1}
        assert consumer.polls <= 10  # one a POLL_TIMEOUT_MS at most; polling every 10 ms made ~100

        for offset in range(3):  # down to half the share: P0 may fetch again
            record = SimpleNamespace(topic=P0.topic, partition=P0.partition, offset=offset)
            runtime._finish(record, time.monotonic(), [])
        deadline = time.monotonic() + 0.1  # far less than the 200 ms a poll could wait
        while consumer.paused() != {P1} and time.monotonic() < deadline:
            time.sleep(0.001)
        assert consumer.paused() == {P1}
    finally:
        runtime.stop()
        loop.join(timeout=5)
