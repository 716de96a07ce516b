"""Dead-letter records: the original bytes and headers, plus where they came from and why they failed."""

from __future__ import annotations

from dataclasses import dataclass

from kafka.consumer.fetcher import ConsumerRecord

HEADER_PREFIX = "vlf.dlq."


@dataclass(frozen=True)
class Letter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(record: ConsumerRecord, *, service: str, error: BaseException, attempts: int) -> Letter:
    """``record``'s key, value and headers (minus any earlier DLQ headers), followed by this failure's
    details. Other clients can write what kafka-python's producer refuses to send (a record with
    neither key nor value, a header without a value): those become empty bytes, so every record the
    broker holds can be dead-lettered instead of stopping the service on each redelivery."""
    kept = [(k, v or b"") for k, v in record.headers or [] if not k.startswith(HEADER_PREFIX)]
    details = {
        "source.topic": record.topic,
        "source.partition": str(record.partition),
        "source.offset": str(record.offset),
        "service": service,
        "error.class": type(error).__name__,
        "error.message": str(error)[:4000],
        "attempts": str(attempts),
    }
    value = b"" if record.key is None and record.value is None else record.value
    return Letter(record.key, value, kept + [(HEADER_PREFIX + k, v.encode()) for k, v in details.items()])


def read_dlq_headers(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """The ``vlf.dlq.*`` headers of a dead letter, without the prefix."""
    return {
        k[len(HEADER_PREFIX) :]: v.decode(errors="replace") for k, v in headers if k.startswith(HEADER_PREFIX)
    }
