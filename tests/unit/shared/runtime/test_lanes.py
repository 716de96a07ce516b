import threading
import time
from dataclasses import dataclass

from shared.runtime.lanes import LanePool


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: int


def _wait_idle(pool: LanePool, timeout_s: float = 10) -> None:
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
