"""The stall rule on its own: lag without committed progress past the bound fails, unless the group's
consumer (or the broker) was restarted within the bound."""

import pytest
from kafka.structs import TopicPartition

from tests.chaos.stall import ConsumerStalled, PartitionLag, StallTracker

TP = TopicPartition("vlf.responses.v1", 5)


def lagging(committed: int, group: str = "vlf-annotator.judge") -> list[PartitionLag]:
    return [PartitionLag(group, TP, committed, end=342)]


def test_lag_without_progress_past_the_bound_is_a_stall() -> None:
    tracker = StallTracker(bound_s=60)
    tracker.observe(lagging(101), now=0)
    tracker.observe(lagging(101), now=59)
    with pytest.raises(ConsumerStalled, match=r"vlf-annotator.judge.*\[5\]: lag 241"):
        tracker.observe(lagging(101), now=61)


def test_progress_or_no_lag_restarts_the_clock() -> None:
    tracker = StallTracker(bound_s=60)
    tracker.observe(lagging(101), now=0)
    tracker.observe(lagging(102), now=50)
    tracker.observe(lagging(102), now=100)
    tracker.observe([PartitionLag("vlf-annotator.judge", TP, 342, end=342)], now=150)
    tracker.observe(lagging(342), now=200)


def test_a_restart_of_the_groups_service_or_the_broker_restarts_its_clock() -> None:
    tracker = StallTracker(bound_s=60)
    tracker.observe(lagging(101) + lagging(7, group="vlf-pair-builder"), now=0)
    tracker.restarted("vlf-annotator.judge", now=40)
    tracker.observe(lagging(101), now=90)  # 50 s since the annotator came back
    with pytest.raises(ConsumerStalled, match="vlf-pair-builder"):
        tracker.observe(lagging(7, group="vlf-pair-builder"), now=90)
    tracker.restarted(None, now=95)
    tracker.observe(lagging(101) + lagging(7, group="vlf-pair-builder"), now=150)
    with pytest.raises(ConsumerStalled, match="vlf-annotator.judge"):
        tracker.observe(lagging(101), now=156)
