from shared.runtime.dlq import dead_letter, read_dlq_headers
from shared.runtime.offsets import OffsetTracker
from tests import factories

TP = ("vlf.responses.v1", 0)


def test_commit_waits_for_the_oldest_unfinished_message():
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.started(TP, offset)
    tracker.finished(TP, 12)
    tracker.finished(TP, 11)
    assert tracker.take_committable() == {}
    tracker.finished(TP, 10)
    assert tracker.take_committable() == {TP: 13}
    assert tracker.in_flight() == 0


def test_committable_is_taken_once():
    tracker = OffsetTracker()
    tracker.started(TP, 0)
    tracker.finished(TP, 0)
    assert tracker.take_committable() == {TP: 1}
    assert tracker.take_committable() == {}


def test_finishing_a_forgotten_partition_is_ignored():
    tracker = OffsetTracker()
    tracker.started(TP, 5)
    tracker.forget([TP])
    tracker.finished(TP, 5)
    assert tracker.take_committable() == {}


def record(offset: int, headers: list, key: bytes | None = b"k", value: bytes | None = b"v"):
    return factories.consumer_record("t", offset, headers, key, value, partition=2)


def test_dlq_headers_keep_originals_and_replace_earlier_failures():
    first = dead_letter(record(7, [("trace", b"1")]), service="svc", error=ValueError("bad"), attempts=3)
    second = dead_letter(record(9, first.headers), service="svc", error=KeyError("k"), attempts=1)
    assert ("trace", b"1") in second.headers
    parsed = read_dlq_headers(second.headers)
    assert parsed["source.offset"] == "9"
    assert parsed["error.class"] == "KeyError"
    assert parsed["attempts"] == "1"
    assert len([h for h in second.headers if h[0] == "vlf.dlq.error.class"]) == 1
    assert (second.key, second.value) == (b"k", b"v")


def test_a_record_without_key_value_or_header_value_still_makes_a_letter():
    """What other clients can write and kafka-python's producer refuses to send."""
    unsendable = record(3, [("trace", None)], key=None, value=None)
    letter = dead_letter(unsendable, service="s", error=ValueError(), attempts=1)
    assert (letter.key, letter.value) == (None, b"")
    assert ("trace", b"") in letter.headers


def test_in_flight_counts_every_partition_and_a_finished_message_behind_an_unfinished_one():
    tracker = OffsetTracker()
    other = ("vlf.responses.v1", 1)
    for offset in (0, 1, 2):
        tracker.started(TP, offset)
    tracker.started(other, 7)
    assert tracker.finished(TP, 1) == 4  # done but behind an unfinished one: still held
    assert tracker.finished(other, 7) == 3
    assert tracker.in_flight() == 3
    assert tracker.finished(TP, 0) == 1  # 0 and 1 are committable now
    tracker.forget([TP])
    assert tracker.in_flight() == 0
