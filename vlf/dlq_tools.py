"""Dead-letter tools: list a DLQ, and replay its letters to their source topic once the cause is fixed.

Replay re-publishes each letter's original key, value and headers (minus ``vlf.dlq.*``), so the
consumer sees exactly what it saw the first time; deterministic ids make the re-processing an upsert.
How far a DLQ was replayed is kept as a committed offset of the consumer group
``vlf-dlq-replay.<namespaced topic>`` on the DLQ: the offset is the first letter not yet replayed,
and its metadata lists the ranges above it that were (a ``--where`` filter can leave letters
behind), so a second replay never re-sends a letter. The commit follows the broker's acks: a crash
in between re-sends those letters once more, which the consumers absorb as upserts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import BaseModel, ConfigDict

from shared.contracts.topics import TopicSpec, topic
from shared.errors import VlfError
from shared.runtime.dlq import HEADER_PREFIX, read_dlq_headers
from shared.settings import CommonSettings

PAYLOAD_PREVIEW_CHARS = 200
# Kafka's default offset.metadata.max.bytes is 4096; stay below it with room to spare.
MAX_MARK_BYTES = 4000
PUBLISH_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0


class DlqToolError(VlfError):
    """A DLQ command cannot run as asked (unknown topic, bad filter, replay state too fragmented)."""


class DeadLetter(BaseModel):
    """One record of a DLQ topic: the original message plus why it failed."""

    model_config = ConfigDict(frozen=True)

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    original_headers: list[tuple[str, bytes]]
    details: dict[str, str]

    @property
    def error_class(self) -> str:
        return self.details.get("error.class", "")

    @property
    def payload_preview(self) -> str:
        text = (self.value or b"").decode(errors="replace")
        return text[:PAYLOAD_PREVIEW_CHARS]


class ReplayMark(BaseModel):
    """Replay progress on one DLQ partition: every offset below ``next_offset`` is done, and so are
    the half-open ``[start, end)`` ranges in ``done_above`` (letters a filter replayed out of order)."""

    next_offset: int
    done_above: list[tuple[int, int]] = []

    def is_done(self, offset: int) -> bool:
        return offset < self.next_offset or any(start <= offset < end for start, end in self.done_above)


class ReplayOutcome(BaseModel):
    replayed: list[DeadLetter]
    skipped_by_filter: int
    dry_run: bool


def parse_where(where: str | None) -> tuple[str, str] | None:
    """``error.class=BlobNotFound`` -> ("error.class", "BlobNotFound")."""
    if where is None:
        return None
    field, sep, value = where.partition("=")
    if not sep or not field.strip():
        raise DlqToolError(f"--where must look like 'error.class=BlobNotFound', got {where!r}")
    return field.strip(), value.strip()


def matches(letter: DeadLetter, where: tuple[str, str] | None) -> bool:
    return where is None or letter.details.get(where[0]) == where[1]


def source_spec(name: str) -> TopicSpec:
    """The registry topic of a DLQ, named either by the source topic or by the DLQ itself."""
    try:
        return topic(name.removesuffix(".dlq"))
    except KeyError as exc:
        raise DlqToolError(str(exc.args[0])) from None


def replay_group(settings: CommonSettings, spec: TopicSpec) -> str:
    return f"vlf-dlq-replay.{settings.topic_namespace}{spec.name}"


def advance_mark(mark: ReplayMark, newly_done: Iterable[int]) -> ReplayMark:
    """Fold freshly replayed offsets into a mark: merge ranges, then move ``next_offset`` over the
    contiguous done prefix so the metadata stays small."""
    ranges = sorted([*mark.done_above, *((o, o + 1) for o in newly_done)])
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    next_offset = mark.next_offset
    while merged and merged[0][0] <= next_offset:
        next_offset = max(next_offset, merged.pop(0)[1])
    return ReplayMark(next_offset=next_offset, done_above=merged)


def encode_mark(mark: ReplayMark) -> OffsetAndMetadata:
    metadata = json.dumps(mark.done_above, separators=(",", ":"))
    if len(metadata) > MAX_MARK_BYTES:
        raise DlqToolError(
            f"replay state of {len(mark.done_above)} separate ranges does not fit a Kafka offset commit; "
            "replay the letters left behind (or all letters) first so the ranges merge"
        )
    return OffsetAndMetadata(mark.next_offset, metadata, -1)


def decode_mark(committed: OffsetAndMetadata | None, beginning: int) -> ReplayMark:
    if committed is None:
        return ReplayMark(next_offset=beginning)
    ranges = json.loads(committed.metadata) if committed.metadata else []
    return ReplayMark(next_offset=max(committed.offset, beginning), done_above=[tuple(r) for r in ranges])


def to_dead_letter(record) -> DeadLetter:  # noqa: ANN001 - a kafka-python ConsumerRecord
    headers = [(k, v) for k, v in (record.headers or [])]
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        original_headers=[(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX)],
        details=read_dlq_headers(headers),
    )


@contextmanager
def _consumer(settings: CommonSettings, group_id: str | None) -> Iterator[KafkaConsumer]:
    consumer = KafkaConsumer(**settings.kafka_client_config(), group_id=group_id, enable_auto_commit=False)
    try:
        yield consumer
    finally:
        consumer.close()


def _dlq_partitions(consumer: KafkaConsumer, dlq_topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(dlq_topic)
    if not partitions:
        raise DlqToolError(f"no topic {dlq_topic} on the broker (nothing was ever dead-lettered there)")
    return [TopicPartition(dlq_topic, p) for p in sorted(partitions)]


def _read_range(consumer: KafkaConsumer, starts: dict[TopicPartition, int], ends: dict) -> list[DeadLetter]:
    """Records from ``starts`` up to the end offsets taken before reading (letters arriving later wait
    for the next run)."""
    wanted = [tp for tp in starts if starts[tp] < ends[tp]]
    if not wanted:
        return []
    consumer.assign(wanted)
    for tp in wanted:
        consumer.seek(tp, starts[tp])
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while any(consumer.position(tp) < ends[tp] for tp in wanted):
        if time.monotonic() > deadline:
            raise DlqToolError(f"could not read {wanted} up to {ends} within {READ_TIMEOUT_S:.0f}s")
        for tp, records in consumer.poll(timeout_ms=1000).items():
            letters += [to_dead_letter(r) for r in records if r.offset < ends[tp]]
    return sorted(letters, key=lambda letter: (letter.partition, letter.offset))


def read_dead_letters(
    settings: CommonSettings, topic_name: str, limit: int | None = None
) -> list[DeadLetter]:
    """Every letter of the topic's DLQ, oldest first (the first ``limit`` when given)."""
    spec = source_spec(topic_name)
    with _consumer(settings, None) as consumer:
        partitions = _dlq_partitions(consumer, settings.topic_namespace + spec.dlq)
        letters = _read_range(
            consumer, consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
        )
    return letters[:limit] if limit is not None else letters


def _committed_marks(consumer: KafkaConsumer, partitions: list[TopicPartition]) -> dict[int, ReplayMark]:
    beginnings = consumer.beginning_offsets(partitions)
    return {
        tp.partition: decode_mark(consumer.committed(tp, metadata=True), beginnings[tp]) for tp in partitions
    }


def replay_marks(settings: CommonSettings, topic_name: str) -> dict[int, ReplayMark]:
    """DLQ partition -> how far it was replayed (for ``show``)."""
    spec = source_spec(topic_name)
    with _consumer(settings, replay_group(settings, spec)) as consumer:
        return _committed_marks(consumer, _dlq_partitions(consumer, settings.topic_namespace + spec.dlq))


def replay(
    settings: CommonSettings, topic_name: str, where: tuple[str, str] | None = None, dry_run: bool = False
) -> ReplayOutcome:
    """Re-publish every not-yet-replayed letter matching ``where`` to its source topic, then commit."""
    spec = source_spec(topic_name)
    with _consumer(settings, replay_group(settings, spec)) as consumer:
        partitions = _dlq_partitions(consumer, settings.topic_namespace + spec.dlq)
        marks = _committed_marks(consumer, partitions)
        starts = {tp: marks[tp.partition].next_offset for tp in partitions}
        letters = _read_range(consumer, starts, consumer.end_offsets(partitions))
        pending = [letter for letter in letters if not marks[letter.partition].is_done(letter.offset)]
        chosen = [letter for letter in pending if matches(letter, where)]
        outcome = ReplayOutcome(
            replayed=chosen, skipped_by_filter=len(pending) - len(chosen), dry_run=dry_run
        )
        if dry_run or not chosen:
            return outcome
        commits = {  # encoded before publishing: a mark too big to commit must fail before any send
            tp: encode_mark(advance_mark(marks[tp.partition], _offsets_in(chosen, tp.partition)))
            for tp in partitions
        }
        _publish(settings, settings.topic_namespace + spec.name, chosen)
        consumer.commit(commits)
    return outcome


def _offsets_in(letters: list[DeadLetter], partition: int) -> list[int]:
    return [letter.offset for letter in letters if letter.partition == partition]


def _publish(settings: CommonSettings, source: str, letters: list[DeadLetter]) -> None:
    producer = KafkaProducer(**settings.kafka_client_config(), acks="all", linger_ms=5)
    try:
        futures = [
            producer.send(source, key=letter.key, value=letter.value, headers=letter.original_headers)
            for letter in letters
        ]
        for future in futures:
            future.get(timeout=PUBLISH_TIMEOUT_S)
    finally:
        producer.close(timeout=10)
