"""Backend for any OpenAI-compatible chat API (vLLM, SGLang, OpenAI, the project's test server).

``generate`` is for callers in worker threads, ``agenerate`` for coroutines on the backend's loop
(the sampler's async handler). The HTTP work runs on one asyncio loop (the service's, when given),
in a background thread, so every caller shares one connection pool and one concurrency limit.
Retries are ours alone (the openai client's are off), so 429/5xx/timeouts are counted, logged and
paced in one place.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import logging
import os
import random
import re
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI, RequestOptions
from PIL import Image
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from shared.backends.base import GenerationRequest, GenerationResult
from shared.backends.errors import ContextLengthError, PermanentBackendError, TransientBackendError
from shared.backends.metrics import BackendMetrics, outcome_of
from shared.runtime.event_loop import LoopThread

log = logging.getLogger(__name__)

# Sent when no key is configured: vLLM and SGLang without --api-key accept any bearer token, and the
# openai client refuses to start without one.
NO_API_KEY = "EMPTY"
CHECK_TIMEOUT_S = 5.0
_CONTEXT_LENGTH_PATTERN = re.compile(
    r"context length|context_length|maximum context|too many tokens|maximum model length", re.IGNORECASE
)


# --- API key -------------------------------------------------------------------------------------


def resolve_api_key(env_var: str | None, file_path: str | None) -> SecretStr | None:
    """The key from a mounted secret file (preferred: Kubernetes secrets) or else an env var."""
    if file_path:
        key = Path(file_path).read_text(encoding="utf-8").strip()
        if key:
            return SecretStr(key)
    if env_var:
        key = os.environ.get(env_var, "").strip()
        if key:
            return SecretStr(key)
    return None


# --- request building ----------------------------------------------------------------------------


def image_mime_type(image: bytes) -> str:
    """The MIME type from the file's magic bytes; servers reject data URLs with the wrong type."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if image.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    if image.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    raise PermanentBackendError(f"unrecognised image format (first bytes {image[:12]!r})")


def image_data_url(image: bytes) -> str:
    """A data URL of a type every OpenAI-compatible server takes: PNG, JPEG, WEBP and GIF as they are,
    any other format Pillow reads (BMP, which intake accepts) re-encoded as PNG."""
    try:
        mime_type = image_mime_type(image)
    except PermanentBackendError:
        image, mime_type = as_png(image), "image/png"
    return f"data:{mime_type};base64,{base64.b64encode(image).decode('ascii')}"


def as_png(image: bytes) -> bytes:
    try:
        with Image.open(io.BytesIO(image)) as decoded:
            buffer = io.BytesIO()
            decoded.save(buffer, format="PNG")
    except (OSError, ValueError) as error:
        message = f"unrecognised image format (first bytes {image[:12]!r}): {error}"
        raise PermanentBackendError(message) from None
    return buffer.getvalue()


def build_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """OpenAI chat messages; the images (data URLs, or the URLs the server fetches) go, before the
    text, into the first user message."""
    urls = [image_data_url(image) for image in request.images] + request.image_urls
    messages: list[dict[str, Any]] = []
    images_placed = not urls
    for message in request.messages:
        if message.role == "user" and not images_placed:
            parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
            parts.append({"type": "text", "text": message.text})
            messages.append({"role": "user", "content": parts})
            images_placed = True
        else:
            messages.append({"role": message.role, "content": message.text})
    if not images_placed:
        raise PermanentBackendError("the request has images but no user message to carry them")
    return messages


def build_completion_kwargs(
    model: str, request: GenerationRequest, chat_template: str | None = None
) -> dict[str, Any]:
    """The chat completion request body; ``chat_template`` is vLLM's per-request override."""
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": build_messages(request),
        "temperature": request.params.temperature,
        "top_p": request.params.top_p,
        "max_tokens": request.params.max_tokens,
    }
    if request.params.seed is not None:
        kwargs["seed"] = request.params.seed
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    if request.response_format is not None:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": request.response_format},
        }
    return kwargs


def result_from_completion(body: bytes, latency_s: float) -> GenerationResult:
    """The first choice of a chat completion; lenient like the SDK, so vLLM's extra fields and
    finish reasons pass. A body that is not a chat completion is a broken server or proxy: worth a
    retry later, never a crash of the service."""
    try:
        completion = json.loads(body)
        choice = completion["choices"][0]
        usage = completion.get("usage") or {}
        return GenerationResult(
            text=message_text(choice["message"].get("content")),
            finish_reason=choice.get("finish_reason") or "unknown",
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            cached_prompt_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
            latency_s=latency_s,
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:  # ValidationError too
        raise TransientBackendError(f"malformed chat completion ({error!r}): {body[:200]!r}") from None


def message_text(content: str | list | None) -> str:
    """A message's text: a string, or the text parts of a list of content parts (some gateways)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(part["text"] for part in content if part.get("type") == "text")
    raise TypeError(f"message content of type {type(content).__name__}")


# --- error classification ------------------------------------------------------------------------


def error_kind(error: BaseException) -> str:
    """The ``kind`` label of ``vlf_backend_errors_total`` for an openai client error (or a 200
    whose body is not a chat completion, which we count as the server's fault)."""
    if isinstance(error, TransientBackendError):
        return "server_error"
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    if isinstance(error, openai.APIStatusError):
        if error.status_code == 408:  # a proxy gave up waiting, e.g. on the upload of a large image
            return "timeout"
        if error.status_code == 409:  # a lock or conflict on the server: the OpenAI client retries it too
            return "conflict"
        if error.status_code == 429:
            return "rate_limited"
        if error.status_code >= 500:
            return "server_error"
        if is_context_length_error(error):
            return "context_length"
    return "client_error"


def is_transient(error: BaseException) -> bool:
    return error_kind(error) in {"timeout", "connection", "conflict", "rate_limited", "server_error"}


def is_context_length_error(error: openai.APIStatusError) -> bool:
    return error.status_code == 400 and bool(_CONTEXT_LENGTH_PATTERN.search(server_message(error)))


def server_message(error: openai.APIError) -> str:
    """The server's own error message (OpenAI error body), else the client's summary."""
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return error.message


def retry_after_s(error: BaseException) -> float | None:
    """The server's requested wait (``retry-after-ms``, ``Retry-After`` seconds or HTTP date)."""
    if not isinstance(error, openai.APIStatusError):
        return None
    headers = error.response.headers
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


# --- the backend ---------------------------------------------------------------------------------


class OpenAIHttpBackend:
    """``Backend`` over an OpenAI-compatible ``/chat/completions`` endpoint.

    Defaults: 16 concurrent calls, 120 s timeout per call, 5 retries with full-jitter exponential
    backoff from 0.5 s capped at 30 s (a server's Retry-After wins, within the same cap).
    ``latency_s`` of a result is the duration of its successful HTTP call. Image bytes travel as
    base64 data URLs, the one form every OpenAI-compatible server accepts; a request's ``image_urls``
    go as they are, for servers allowed to fetch them. ``chat_template`` (the template's text) goes
    with every request, for servers that take a per-request template (vLLM). A concurrency slot is
    held through a request's backoff sleeps, so a rate-limited server sees fewer calls.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None,
        api_key: SecretStr | None,
        *,
        concurrency: int = 16,
        timeout_s: float = 120,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30,
        chat_template: str | None = None,
        registry: CollectorRegistry | None = None,
        loop: LoopThread | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.base_url = base_url
        self.chat_template = chat_template
        self._api_key = api_key
        self._max_retries = max_retries
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        # Given explicitly so the SDK need not deep-copy its defaults for every call (measurable CPU
        # at high concurrency); the same values the client would use.
        self._request_options: RequestOptions = {"headers": {}, "max_retries": 0, "timeout": timeout_s}
        # An idempotency key per request (this backend's prefix and a counter), the same for all its
        # attempts. The OpenAI client sends no such header today, but without one it draws a uuid4
        # for every call, and that getrandom call gives up the GIL on the event loop's thread, which
        # then waits behind the Kafka and ledger threads to get it back.
        self._idempotency_prefix = f"vlf-{uuid.uuid4().hex}"
        self._request_numbers = itertools.count()
        self._metrics = BackendMetrics(model, registry)
        # The service's loop when it has one (its async handlers then await ``agenerate`` on it).
        self._loop = loop or LoopThread(name=f"openai-http-{model}")
        self._owns_loop = loop is None
        self._semaphore = asyncio.Semaphore(concurrency)
        # aiohttp under the SDK (its ``aiohttp`` extra) and uvloop below: httpcore's pool costs CPU
        # per call that grows with the number of connections, which capped throughput at 64 calls.
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = AsyncOpenAI(
            api_key=api_key.get_secret_value() if api_key else NO_API_KEY,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(limits=limits, timeout=timeout_s),
        )

    def __repr__(self) -> str:
        return f"OpenAIHttpBackend(model={self.model!r}, base_url={self.base_url!r})"

    # --- Backend protocol ---

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Results in request order; raises the first request's error (in order) if any failed."""
        return self._loop.run(self.agenerate(requests))

    async def agenerate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """``generate`` for coroutines running on this backend's loop."""
        if len(requests) == 1:  # the usual case (n=1): no task and gather for each call
            return [await self._generate_one(requests[0])]
        outcomes = await asyncio.gather(*(self._generate_one(r) for r in requests), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]  # no exceptions left after the loop above

    def check(self) -> None:
        self._loop.run(self._check())

    def close(self) -> None:
        if self._loop.started:
            self._loop.run(self._client.close())
        if self._owns_loop:
            self._loop.stop()

    # --- internals ---

    async def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        kwargs = build_completion_kwargs(self.model, request, self.chat_template)
        options: RequestOptions = {
            **self._request_options,
            "idempotency_key": f"{self._idempotency_prefix}-{next(self._request_numbers)}",
        }
        async with self._semaphore:
            try:
                result = await self._call_with_retries(kwargs, options)
            except (openai.APIError, TransientBackendError) as error:
                raise self._classified(error) from None
        self._metrics.succeeded(result)
        return result

    async def _call_with_retries(self, kwargs: dict[str, Any], options: RequestOptions) -> GenerationResult:
        """Transient failures are retried after ``_wait_s``, up to ``max_retries`` times; the last
        error is raised. A plain loop, not tenacity: its setup for every call (retry state, action
        lists, coroutine checks) cost 7% of the sampler's CPU at 64 calls in flight, where almost
        every call succeeds at once."""
        attempt = 1
        while True:
            try:
                return await self._call_once(kwargs, options)
            except (openai.APIError, TransientBackendError) as error:
                if attempt > self._max_retries or not is_transient(error):
                    raise
                wait_s = self._wait_s(error, attempt)
                self._log_retry(error, attempt, wait_s)
            await asyncio.sleep(wait_s)
            attempt += 1

    async def _call_once(self, kwargs: dict[str, Any], options: RequestOptions) -> GenerationResult:
        """One HTTP call. ``client.post`` (the SDK's documented raw route) skips the SDK's params
        transform and response model construction, about 1 ms of CPU per call that would cap
        throughput at high concurrency; the payload is already built by ``build_completion_kwargs``."""
        started = time.perf_counter()
        try:
            with self._metrics.in_flight.track_inprogress():
                response = await self._client.post(
                    "/chat/completions", body=kwargs, cast_to=httpx2.Response, options=options
                )
            return result_from_completion(response.content, time.perf_counter() - started)
        except (openai.APIError, TransientBackendError) as error:
            self._metrics.attempt_failed(error_kind(error))
            raise

    def _wait_s(self, error: BaseException, attempt: int) -> float:
        """Retry-After when the server gave one, else full jitter: uniform(0, base * 2^(attempt-1))."""
        requested = retry_after_s(error)
        if requested is not None:
            return min(requested, self._backoff_max_s)
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    def _log_retry(self, error: BaseException, attempt: int, wait_s: float) -> None:
        log.warning(
            "backend call failed, retrying: model=%s attempt=%d kind=%s wait_s=%.2f error=%s",
            self.model,
            attempt,
            error_kind(error),
            wait_s,
            self._describe(error),
        )

    def _classified(
        self, error: openai.APIError | TransientBackendError
    ) -> TransientBackendError | PermanentBackendError:
        """Our error class for an error that retries could not (or must not) fix."""
        description = self._describe(error)
        classified: TransientBackendError | PermanentBackendError
        if is_transient(error):
            attempts = self._max_retries + 1
            classified = TransientBackendError(
                f"{self.model}: gave up after {attempts} attempts: {description}"
            )
        elif error_kind(error) == "context_length":
            classified = ContextLengthError(f"{self.model}: {description}")
        else:
            classified = PermanentBackendError(f"{self.model}: {description}")
        self._metrics.failed(outcome_of(classified))
        return classified

    def _describe(self, error: BaseException) -> str:
        """``status N: server message`` (or the client's message), with the API key redacted."""
        key = self._api_key.get_secret_value() if self._api_key else None
        if isinstance(error, openai.APIStatusError):
            return redact(f"status {error.status_code}: {server_message(error)}", key)
        if isinstance(error, TransientBackendError):
            return redact(str(error), key)
        return redact(f"{type(error).__name__}: {error}", key)

    async def _check(self) -> None:
        try:
            await self._client.models.list(timeout=CHECK_TIMEOUT_S)
        except openai.APIError as error:
            if isinstance(error, openai.APIStatusError) and not is_transient(error):
                raise PermanentBackendError(f"{self.model}: {self._describe(error)}") from None
            raise TransientBackendError(
                f"{self.model}: unreachable at {self.base_url}: {self._describe(error)}"
            ) from None
