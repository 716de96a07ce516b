"""Replay bookkeeping: which DLQ offsets count as replayed, and how that fits one offset commit."""

from __future__ import annotations

import pytest

from vlf.dlq_tools import (
    DeadLetter,
    DlqToolError,
    ReplayMark,
    advance_mark,
    decode_mark,
    encode_mark,
    matches,
    parse_where,
)


def test_advance_mark_moves_over_the_done_prefix_and_keeps_ranges_above_it():
    mark = advance_mark(ReplayMark(next_offset=0), [0, 1, 3, 4, 7])
    assert mark == ReplayMark(next_offset=2, done_above=[(3, 5), (7, 8)])
    assert [o for o in range(9) if mark.is_done(o)] == [0, 1, 3, 4, 7]
    filled = advance_mark(mark, [2, 5, 6])
    assert filled == ReplayMark(next_offset=8, done_above=[])


def test_mark_round_trips_through_a_commit_and_never_moves_below_the_log_start():
    mark = ReplayMark(next_offset=5, done_above=[(7, 9)])
    committed = encode_mark(mark)
    assert decode_mark(committed, beginning=0) == mark
    assert decode_mark(committed, beginning=6).next_offset == 6
    assert decode_mark(None, beginning=3) == ReplayMark(next_offset=3)


def test_a_mark_too_fragmented_for_kafka_metadata_is_refused():
    with pytest.raises(DlqToolError, match="does not fit"):
        encode_mark(ReplayMark(next_offset=0, done_above=[(i * 2 + 1, i * 2 + 2) for i in range(1000)]))


def test_where_filter_matches_dlq_headers():
    letter = DeadLetter(
        partition=0,
        offset=1,
        key=b"k",
        value=b"v",
        original_headers=[],
        details={"error.class": "BlobNotFound"},
    )
    assert matches(letter, parse_where("error.class=BlobNotFound"))
    assert not matches(letter, parse_where("error.class=ContractError"))
    assert matches(letter, None)
    with pytest.raises(DlqToolError):
        parse_where("error.class")
