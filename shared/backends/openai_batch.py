"""OpenAI's Batch API (``/v1/files`` + ``/v1/batches``) for judge calls that can wait, at its price.

The caller names each batch with its own key, which goes into the uploaded file's name and the
batch's metadata: after a crash between a send and its record, ``find_file`` and ``find_batch``
find what was sent, so nothing is uploaded twice. Each request line is the body the live backend
would send (``build_completion_kwargs``), and each result is read by the live backend's parser, so
a batch reply and a live reply of the same request are the same ``GenerationResult``.

Errors come out as the live backend's: transient ones (the server away, 429, 5xx) are worth another
try on the next poll, permanent ones are not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai
from openai import OpenAI
from pydantic import SecretStr

from shared.backends.base import GenerationRequest, GenerationResult
from shared.backends.errors import PermanentBackendError, TransientBackendError
from shared.backends.openai_http import (
    NO_API_KEY,
    build_completion_kwargs,
    is_transient,
    redact,
    result_from_completion,
    server_message,
)

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
KEY_METADATA = "vlf_batch"
# How far back, before our own record of a batch, a search for what was sent looks.
FIND_SLACK_S = 3600
DONE_STATES = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class BatchStatus:
    status: str  # validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled
    output_file_id: str | None
    error_file_id: str | None
    errors: str | None  # why the batch as a whole failed

    @property
    def done(self) -> bool:
        return self.status in DONE_STATES


@dataclass(frozen=True)
class BatchItem:
    """One request's outcome: a reply, or why there is none."""

    custom_id: str
    result: GenerationResult | None
    error: str | None


def file_name(key: str) -> str:
    return f"vlf-batch-{key}.jsonl"


class OpenAIBatchClient:
    def __init__(
        self,
        model: str,
        base_url: str | None,
        api_key: SecretStr | None,
        *,
        timeout_s: float = 300,
        chat_template: str | None = None,
    ) -> None:
        self.model = model
        self.chat_template = chat_template
        self._api_key = api_key
        self._client = OpenAI(
            api_key=api_key.get_secret_value() if api_key else NO_API_KEY,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,
        )

    def request_body(self, request: GenerationRequest) -> dict[str, Any]:
        return build_completion_kwargs(self.model, request, self.chat_template)

    def upload(self, key: str, lines: list[tuple[str, dict[str, Any]]]) -> str:
        """Upload (custom id, body) lines as the batch input file of ``key``; returns the file id."""
        data = "".join(
            json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + "\n"
            for custom_id, body in lines
        ).encode()
        with self._errors("upload"):
            return self._client.files.create(file=(file_name(key), data), purpose="batch").id

    def find_file(self, key: str, since: float) -> str | None:
        """The input file of ``key`` uploaded after ``since`` (epoch seconds), if any."""
        with self._errors("list files"):
            for uploaded in self._client.files.list(purpose="batch"):
                if uploaded.filename == file_name(key):
                    return uploaded.id
                if uploaded.created_at < since - FIND_SLACK_S:
                    return None  # newest first: older ones predate the batch
        return None

    def create(self, key: str, file_id: str) -> str:
        with self._errors("create batch"):
            batch = self._client.batches.create(
                input_file_id=file_id,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata={KEY_METADATA: key},
            )
        return batch.id

    def find_batch(self, key: str, since: float) -> str | None:
        """The batch created for ``key`` after ``since`` (epoch seconds), if any."""
        with self._errors("list batches"):
            for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(KEY_METADATA) == key:
                    return batch.id
                if batch.created_at < since - FIND_SLACK_S:
                    return None
        return None

    def status(self, batch_id: str) -> BatchStatus:
        with self._errors("read batch"):
            batch = self._client.batches.retrieve(batch_id)
        errors = (
            "; ".join(e.message or e.code or "" for e in batch.errors.data or []) if batch.errors else None
        )
        return BatchStatus(batch.status, batch.output_file_id, batch.error_file_id, errors or None)

    def items(self, file_id: str) -> Iterator[BatchItem]:
        """The lines of a batch output or error file."""
        with self._errors("read results"):
            content = self._client.files.content(file_id).content
        for line in content.splitlines():
            if line.strip():
                yield self._item(json.loads(line))

    def close(self) -> None:
        self._client.close()

    def _item(self, line: dict[str, Any]) -> BatchItem:
        custom_id = line["custom_id"]
        response = line.get("response") or {}
        if line.get("error"):
            error = line["error"]
            return BatchItem(custom_id, None, f"{error.get('code')}: {error.get('message')}")
        if response.get("status_code") != 200:
            body = response.get("body") or {}
            message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
            return BatchItem(custom_id, None, f"status {response.get('status_code')}: {message}")
        try:
            result = result_from_completion(json.dumps(response["body"]).encode(), latency_s=0.0)
        except TransientBackendError as error:  # a malformed completion: this item has no reply
            return BatchItem(custom_id, None, str(error))
        return BatchItem(custom_id, result, None)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """The SDK's errors as the backends' transient and permanent errors, the key redacted."""
        try:
            yield
        except openai.APIError as error:
            status = f"status {error.status_code}: " if isinstance(error, openai.APIStatusError) else ""
            secret = self._api_key.get_secret_value() if self._api_key else None
            message = redact(f"{self.model}: batch {doing}: {status}{server_message(error)}", secret)
            if is_transient(error):
                raise TransientBackendError(message) from None
            raise PermanentBackendError(message) from None
