"""Dead-letter records: the original bytes and headers, plus where they came from and why they failed."""

from __future__ import annotations

HEADER_PREFIX = "vlf.dlq."


def dlq_headers(
    original_headers: list[tuple[str, bytes]],
    *,
    topic: str,
    partition: int,
    offset: int,
    service: str,
    error: BaseException,
    attempts: int,
) -> list[tuple[str, bytes]]:
    """Original headers (minus any earlier DLQ headers) followed by this failure's details."""
    kept = [(k, v) for k, v in original_headers if not k.startswith(HEADER_PREFIX)]
    details = {
        "source.topic": topic,
        "source.partition": str(partition),
        "source.offset": str(offset),
        "service": service,
        "error.class": type(error).__name__,
        "error.message": str(error)[:4000],
        "attempts": str(attempts),
    }
    return kept + [(HEADER_PREFIX + k, v.encode()) for k, v in details.items()]


def read_dlq_headers(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """The ``vlf.dlq.*`` headers of a dead letter, without the prefix."""
    return {
        k[len(HEADER_PREFIX) :]: v.decode(errors="replace") for k, v in headers if k.startswith(HEADER_PREFIX)
    }
