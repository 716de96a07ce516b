import asyncio
import threading
import time
from dataclasses import dataclass

from shared.runtime.event_loop import LoopThread
from shared.runtime.lanes import AsyncLanePool, LanePool


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: int


def _wait_idle(pool: LanePool | AsyncLanePool, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not pool.idle():
        assert time.monotonic() < deadline, "lanes never went idle"
        time.sleep(0.005)


def test_distinct_keys_run_on_all_lanes_at_once():
    """Eight messages with eight keys on eight lanes must all be running together: none may wait
    behind another lane's message (a barrier that needs all eight would time out)."""
    barrier = threading.Barrier(8, timeout=5)
    passed: list[int] = []
    pool = LanePool("t", 8, threading.Event())
    pool.start(lambda r: (barrier.wait(), passed.append(r.value)))
    for i in range(8):
        pool.put(Record(f"instruction-{i}".encode(), i))
    _wait_idle(pool)
    assert sorted(passed) == list(range(8))
    pool.stop()
    pool.join(5)


def test_one_keys_messages_run_one_at_a_time_in_arrival_order():
    running: dict[bytes, int] = {}
    overlaps: list[bytes] = []
    seen: dict[bytes, list[int]] = {}
    lock = threading.Lock()

    def process(record: Record) -> None:
        with lock:
            running[record.key] = running.get(record.key, 0) + 1
            if running[record.key] > 1:
                overlaps.append(record.key)
        time.sleep(0.001)
        with lock:
            seen.setdefault(record.key, []).append(record.value)
            running[record.key] -= 1

    pool = LanePool("t", 8, threading.Event())
    pool.start(process)
    keys = [b"a", b"b", b"c", None]
    for i in range(200):
        pool.put(Record(keys[i % 4], i))
    _wait_idle(pool)
    assert overlaps == []
    assert seen[b"a"] == list(range(0, 200, 4))
    assert seen[None] == list(range(3, 200, 4))  # no key: one sequence of its own
    pool.stop()
    pool.join(5)


def test_stop_finishes_what_was_given_and_abandon_leaves_the_rest():
    done: list[int] = []
    abandoned = threading.Event()
    pool = LanePool("t", 2, abandoned)
    pool.start(lambda r: (time.sleep(0.01), done.append(r.value)))
    for i in range(10):
        pool.put(Record(b"same", i))
    pool.stop()
    pool.join(10)
    assert done == list(range(10))

    stuck = threading.Event()
    pool = LanePool("t", 2, abandoned)
    pool.start(lambda r: (stuck.wait(5), done.append(r.value)))
    for i in range(100, 110):
        pool.put(Record(b"same", i))
    time.sleep(0.05)
    abandoned.set()
    stuck.set()
    pool.join(5)
    assert done[10:] == [100]  # the running one finishes; the nine behind it are left
    assert not pool.idle()


# --- AsyncLanePool: the same guarantees for coroutine handlers on an event loop ---


def _async_pool(size: int, abandoned: threading.Event) -> tuple[AsyncLanePool, LoopThread]:
    loop = LoopThread("test-lanes")
    return AsyncLanePool(size, abandoned, loop), loop


def test_async_lanes_run_distinct_keys_at_once():
    """Eight keys on eight lanes: all must be awaiting together (the barrier needs all eight)."""
    arrived: list[int] = []
    passed: list[int] = []
    pool, loop = _async_pool(8, threading.Event())

    async def process(record: Record) -> None:
        arrived.append(record.value)
        while len(arrived) < 8:
            await asyncio.sleep(0.001)
        passed.append(record.value)

    pool.start(process)
    for i in range(8):
        pool.put(Record(f"instruction-{i}".encode(), i))
    _wait_idle(pool)
    assert sorted(passed) == list(range(8))
    pool.stop()
    pool.join(5)
    loop.stop()


def test_async_lanes_run_one_keys_messages_one_at_a_time_in_arrival_order():
    running: dict[bytes | None, int] = {}
    overlaps: list[bytes | None] = []
    seen: dict[bytes | None, list[int]] = {}

    async def process(record: Record) -> None:
        running[record.key] = running.get(record.key, 0) + 1
        if running[record.key] > 1:
            overlaps.append(record.key)
        await asyncio.sleep(0.001)
        seen.setdefault(record.key, []).append(record.value)
        running[record.key] -= 1

    pool, loop = _async_pool(8, threading.Event())
    pool.start(process)
    keys = [b"a", b"b", b"c", None]
    for i in range(200):
        pool.put(Record(keys[i % 4], i))
    _wait_idle(pool)
    assert overlaps == []
    assert seen[b"a"] == list(range(0, 200, 4))
    assert seen[None] == list(range(3, 200, 4))
    pool.stop()
    pool.join(5)
    loop.stop()


def test_async_lanes_stop_finishes_what_was_given_and_abandon_leaves_the_rest():
    done: list[int] = []
    abandoned = threading.Event()
    pool, loop = _async_pool(2, abandoned)

    async def slow(record: Record) -> None:
        await asyncio.sleep(0.01)
        done.append(record.value)

    pool.start(slow)
    for i in range(10):
        pool.put(Record(b"same", i))
    pool.stop()
    pool.join(10)
    assert done == list(range(10))
    loop.stop()

    release = threading.Event()
    pool, loop = _async_pool(2, abandoned)

    async def stuck(record: Record) -> None:
        while not release.is_set():
            await asyncio.sleep(0.005)
        done.append(record.value)

    pool.start(stuck)
    for i in range(100, 110):
        pool.put(Record(b"same", i))
    time.sleep(0.05)
    abandoned.set()
    release.set()
    pool.join(5)
    assert done[10:] == [100]  # the running one finishes; the nine behind it are left
    assert not pool.idle()
    loop.stop()
