"""Bytes <-> event models. Every decoding failure is a ``ContractError`` whose message says why."""

from __future__ import annotations

import json

from pydantic import ValidationError

from shared.contracts.events import Event
from shared.contracts.topics import TopicSpec
from shared.errors import ContractError

MAX_MESSAGE_BYTES = 1_000_000  # Kafka's default message.max.bytes; bigger payloads belong in the blob store


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


def _refuse_non_finite(literal: str) -> float:
    """``json.loads`` accepts NaN and Infinity, which are not JSON: refuse them anywhere in a payload,
    untyped fields included, so none is passed on (pydantic would re-encode it as ``null``)."""
    raise ValueError(f"{literal} is not a JSON number (non-finite floats are refused)")


def decode(spec: TopicSpec, data: bytes | None) -> Event:
    """Parse one message of ``spec``'s topic, checking size, JSON, schema version and fields."""
    if data is None:
        raise ContractError("empty message (tombstone) where an event was expected")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ContractError(f"payload of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        raw = json.loads(data, parse_constant=_refuse_non_finite)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ContractError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ContractError("invalid JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ContractError(f"payload must be a JSON object, got {type(raw).__name__}")
    expected = spec.model.model_fields["schema_version"].default
    version = raw.get("schema_version")
    if version != expected:
        raise ContractError(
            f"unknown schema_version {version!r} for {spec.name} (this consumer reads {expected})"
        )
    try:
        return spec.model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ContractError(f"invalid {spec.model.__name__}: {problems}") from None
