"""A real OpenAI-compatible HTTP server for tests, benchmarks, the chaos suite and the demo.

It speaks ``POST /v1/chat/completions`` and ``GET /v1/models`` like vLLM or OpenAI, validates the
request shape (a data-URL image must decode; an http(s) image URL is fetched, as vLLM does, and must
decode too), and misbehaves on request: latency, 429 with Retry-After, 500, hangs past the client's
timeout, a context limit. Every call is recorded
(``GET/DELETE /_calls``, ``GET /_stats``) so tests can check what a client really sent.

It also speaks OpenAI's Batch API (``/v1/files``, ``/v1/batches``, in ``devkit.openai_test_batches``):
a batch stays in_progress for ``batch_completion_s``, then the next poll runs each line through the same
path as a live call and writes the output and error files; ``batch_fail_custom_ids`` and
``batch_expire`` make items fail or the batch expire.

Token counting rule (reported in ``usage``): prompt tokens = whitespace-separated words of every
text in the messages + ``TOKENS_PER_IMAGE`` per image; completion tokens = words of the reply.
The reply is cut to ``max_tokens`` words, with ``finish_reason`` "length" when cut. With
``prefix_cache_block_tokens`` set, the server also reports ``usage.prompt_tokens_details.cached_tokens``
as a server with automatic prefix caching does (vLLM, OpenAI): the leading whole blocks of the prompt's
tokens, in message and content-part order, that an earlier request's prompt began with.

Run: ``python -m devkit.openai_test_server --port 8001 --latency 0.2 --fail-429-rate 0.1``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
import typer
import uvicorn
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKENS_PER_IMAGE = 85
DATA_URL_PREFIX = "data:image/"

Responder = Callable[[dict[str, Any]], str]
Misbehaviour = Literal["rate_limited", "server_error", "hang"]


class TestServerConfig(BaseModel):
    """How the server behaves. Defaults: instant, always succeeds, model ``test-model``, no key."""

    __test__ = False  # not a pytest test class despite its name
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    # --- models and auth ---
    models: list[str] = Field(["test-model"], description="Served model ids; others get a 404.")
    api_key: SecretStr | None = Field(None, description="When set, requests need this bearer token.")
    # --- latency ---
    latency_s: float = Field(0.0, ge=0, description="Fixed delay before every reply.")
    latency_jitter_s: float = Field(0.0, ge=0, description="Extra uniform(0, jitter) delay.")
    # --- failures (drawn per call from the seed and the call's index, so runs repeat) ---
    fail_429_rate: float = Field(0.0, ge=0, le=1)
    fail_500_rate: float = Field(0.0, ge=0, le=1)
    timeout_rate: float = Field(0.0, ge=0, le=1, description="Share of calls that hang for hang_s.")
    hang_s: float = Field(600.0, ge=0, description="How long a hanging call sleeps before a 504.")
    retry_after_s: float | None = Field(None, ge=0, description="Retry-After header on 429s.")
    failure_script: list[Misbehaviour] = Field(
        default_factory=list, description="Forced misbehaviour of the first calls, in arrival order."
    )
    seed: int = 0
    # --- content ---
    context_limit_tokens: int | None = Field(None, ge=1, description="Longer prompts get a 400.")
    prefix_cache_block_tokens: int | None = Field(
        None, ge=1, description="Report cached prompt tokens, cached in blocks of this many; None: off."
    )
    responder: Responder | None = Field(
        None, description="(request JSON) -> reply text; default: a short answer from the prompt's hash."
    )
    reply_json_when_response_format: bool = Field(
        True, description="The default responder answers a json_schema response_format with JSON."
    )
    # --- batch API ---
    batch_completion_s: float = Field(
        0.0, ge=0, description="A batch stays in_progress this long after creation, then runs when polled."
    )
    batch_fail_custom_ids: list[str] = Field(
        default_factory=list, description="Batch items with these custom_ids get a 500 error line."
    )
    batch_expire: bool = Field(
        False, description="Batches expire instead of completing: the first half of their lines run."
    )


# --- request shape ---------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart]


class ChatCompletionRequest(BaseModel):
    """The fields this server acts on; other OpenAI fields are accepted and ignored."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    chat_template: str | None = Field(None, description="vLLM's per-request chat template override.")


class CallRecord(BaseModel):
    id: str
    model: str
    n_images: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    status: int
    started_at: float
    text_prompt_sha256: str
    first_user_text: str
    chat_template: str | None = None
    fetched_image_urls: list[str] = []
    batch_id: str | None = Field(None, description="The batch that ran this call; None for a live call.")


# --- pure helpers --------------------------------------------------------------------------------


def message_texts(message: Message) -> list[str]:
    if isinstance(message.content, str):
        return [message.content]
    return [part.text for part in message.content if isinstance(part, TextPart)]


def image_urls(request: ChatCompletionRequest) -> list[str]:
    return [
        part.image_url.url
        for message in request.messages
        if not isinstance(message.content, str)
        for part in message.content
        if isinstance(part, ImagePart)
    ]


def is_fetched(url: str) -> bool:
    """An image URL the server downloads itself (the rest must be data URLs)."""
    return url.startswith(("http://", "https://"))


def data_url_bytes(url: str) -> bytes:
    """The bytes of a base64 image data URL; ValueError for anything else."""
    header, sep, payload = url.partition(",")
    if not (url.startswith(DATA_URL_PREFIX) and sep and header.endswith(";base64")):
        expected = "a base64 data URL (data:image/...;base64,...) or an http(s) URL"
        raise ValueError(f"image_url must be {expected}, got {url[:40]!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ValueError(f"image_url is not valid base64: {error}") from error


async def fetched_bytes(url: str) -> bytes:
    """The image at an http(s) URL; ValueError when it cannot be fetched (vLLM answers 400 then too)."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.get(url)
    except httpx.HTTPError as error:
        raise ValueError(f"image_url {url} could not be fetched: {error!r}") from error
    if reply.status_code != 200:
        raise ValueError(f"image_url {url} could not be fetched: HTTP {reply.status_code}")
    return reply.content


def verify_image(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image_url does not decode to an image: {error}") from error


def prompt_token_sequence(request: ChatCompletionRequest) -> list[str]:
    """The prompt as this server counts it: each text's words, each image as ``TOKENS_PER_IMAGE``
    tokens naming the image, in message and content-part order."""
    tokens: list[str] = []
    for message in request.messages:
        parts = (
            [TextPart(type="text", text=message.content)]
            if isinstance(message.content, str)
            else message.content
        )
        for part in parts:
            if isinstance(part, TextPart):
                tokens += part.text.split()
            else:
                digest = hashlib.sha256(part.image_url.url.encode()).hexdigest()[:16]
                tokens += [f"<image {digest}>"] * TOKENS_PER_IMAGE
    return tokens


class PrefixCache:
    """Automatic prefix caching as vLLM does it: a prompt is cut into blocks of ``block_tokens``, each
    block known by a hash chained over every block before it, so a block is cached only where the
    whole prefix up to it was seen before. Only touched from the server's event loop."""

    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self._blocks: set[str] = set()

    def cached_tokens(self, tokens: list[str]) -> int:
        """How many leading tokens were cached; the prompt's blocks are cached from now on."""
        cached, chain, hit = 0, "", True
        for start in range(0, len(tokens) - self.block_tokens + 1, self.block_tokens):
            block = "\0".join(tokens[start : start + self.block_tokens])
            chain = hashlib.sha256(f"{chain}|{block}".encode()).hexdigest()
            hit = hit and chain in self._blocks
            cached += self.block_tokens if hit else 0
            self._blocks.add(chain)
        return cached


def text_prompt_sha256(request: ChatCompletionRequest) -> str:
    joined = "\n".join(
        f"{message.role}: {text}" for message in request.messages for text in message_texts(message)
    )
    return hashlib.sha256(joined.encode()).hexdigest()


def first_user_text(request: ChatCompletionRequest) -> str:
    for message in request.messages:
        if message.role == "user":
            return "\n".join(message_texts(message))
    return ""


def example_from_schema(schema: dict[str, Any], token: str) -> Any:
    """A small value that satisfies common JSON schemas (objects, arrays, enums, scalars)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: example_from_schema(sub, token) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [example_from_schema(schema.get("items", {}), token)] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return True
    return f"answer {token}"


def default_responder(request_json: dict[str, Any], reply_json: bool = True) -> str:
    """A short answer fixed by the prompt's hash, or JSON following a json_schema response_format."""
    request = ChatCompletionRequest.model_validate(request_json)
    token = text_prompt_sha256(request)[:8]
    response_format = request.response_format or {}
    if reply_json and response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema", {})
        return json.dumps(example_from_schema(schema, token))
    return f"Test answer {token}: the image shows what the question asks about."


def error_body(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


@dataclass(frozen=True)
class Reply:
    """A chat completion's answer before it becomes an HTTP response or a line of a batch's output."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


# --- the app -------------------------------------------------------------------------------------


class _CallLog:
    """Calls and in-flight counts; only touched from the server's event loop."""

    def __init__(self) -> None:
        self.records: dict[str, CallRecord] = {}
        self.arrivals = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def add(self, record: CallRecord) -> None:
        self.records[record.id] = record

    def update(self, record: CallRecord) -> None:
        """Replace a record, unless ``DELETE /_calls`` dropped it meanwhile."""
        if record.id in self.records:
            self.records[record.id] = record

    def reset(self) -> None:
        self.records.clear()
        self.max_in_flight = self.in_flight

    def stats(self) -> dict[str, Any]:
        by_status = Counter(str(call.status) for call in self.records.values())
        return {
            "total": len(self.records),
            "by_status": dict(by_status),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


def latency_jitter_s(config: TestServerConfig, call_index: int) -> float:
    """Extra delay of one call, seeded per call index so a run repeats."""
    if not config.latency_jitter_s:
        return 0.0
    return random.Random(f"{config.seed}:latency:{call_index}").uniform(0, config.latency_jitter_s)


def draw_misbehaviour(config: TestServerConfig, call_index: int) -> Misbehaviour | None:
    """Scripted first, then random by rate; seeded per call index so a run repeats."""
    if call_index < len(config.failure_script):
        return config.failure_script[call_index]
    if not (config.fail_429_rate or config.fail_500_rate or config.timeout_rate):
        return None  # no draw: seeding a Random from a string costs a hash per call
    draw = random.Random(f"{config.seed}:{call_index}").random()
    for misbehaviour, rate in (
        ("rate_limited", config.fail_429_rate),
        ("server_error", config.fail_500_rate),
        ("hang", config.timeout_rate),
    ):
        if draw < rate:
            return misbehaviour
        draw -= rate
    return None


def create_app(config: TestServerConfig) -> Starlette:
    """Plain Starlette, not FastAPI: at 64 calls in flight in a benchmark, FastAPI's routing and
    middleware cost the server a third of its CPU on the same cores as the client it measures."""
    from devkit.openai_test_batches import batch_routes  # here: that module builds on this one's shapes

    calls = _CallLog()
    cache = PrefixCache(config.prefix_cache_block_tokens) if config.prefix_cache_block_tokens else None

    def unauthorised(request: Request) -> JSONResponse | None:
        if config.api_key is None:
            return None
        expected = f"Bearer {config.api_key.get_secret_value()}"
        if request.headers.get("authorization") == expected:
            return None
        return JSONResponse(
            error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), 401
        )

    async def list_models(request: Request) -> JSONResponse:
        if (denied := unauthorised(request)) is not None:
            return denied
        data = [{"id": model, "object": "model", "created": 0, "owned_by": "test"} for model in config.models]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(http_request: Request) -> JSONResponse:
        if (denied := unauthorised(http_request)) is not None:
            return denied
        call_index = calls.arrivals
        calls.arrivals += 1
        calls.in_flight += 1
        calls.max_in_flight = max(calls.max_in_flight, calls.in_flight)
        try:
            return await _complete(http_request, call_index)
        finally:
            calls.in_flight -= 1

    async def _complete(http_request: Request, call_index: int) -> JSONResponse:
        reply = await answer(
            await http_request.body(),
            f"call-{call_index}",
            delay_s=config.latency_s + latency_jitter_s(config, call_index),
            misbehaviour=draw_misbehaviour(config, call_index),
        )
        if reply.status == 504:
            await asyncio.sleep(config.hang_s)
        return JSONResponse(reply.body, reply.status, headers=reply.headers)

    async def answer(
        raw: bytes,
        call_id: str,
        *,
        batch_id: str | None = None,
        delay_s: float = 0.0,
        misbehaviour: Misbehaviour | None = None,
    ) -> Reply:
        """One chat completion, recorded in the call log: the single path of live calls and batch items,
        so a batch answers exactly what a live call with the same body would."""
        started_at = time.time()
        try:
            request_json = json.loads(raw)
            request = ChatCompletionRequest.model_validate(request_json)
            for url in image_urls(request):
                verify_image(await fetched_bytes(url) if is_fetched(url) else data_url_bytes(url))
        except (ValueError, ValidationError) as error:  # json and pydantic errors are ValueErrors
            record = CallRecord(
                id=call_id,
                model="",
                n_images=0,
                prompt_tokens=0,
                completion_tokens=0,
                status=400,
                started_at=started_at,
                text_prompt_sha256="",
                first_user_text="",
                batch_id=batch_id,
            )
            calls.add(record)
            return Reply(400, error_body(f"invalid request: {error}", "invalid_request_error"))

        tokens = prompt_token_sequence(request)
        record = CallRecord(
            id=call_id,
            model=request.model,
            n_images=len(image_urls(request)),
            prompt_tokens=len(tokens),
            completion_tokens=0,
            cached_prompt_tokens=cache.cached_tokens(tokens) if cache is not None else 0,
            status=200,
            started_at=started_at,
            text_prompt_sha256=text_prompt_sha256(request),
            first_user_text=first_user_text(request),
            chat_template=request.chat_template,
            fetched_image_urls=[url for url in image_urls(request) if is_fetched(url)],
            batch_id=batch_id,
        )
        calls.add(record)
        await asyncio.sleep(delay_s)

        reply, record = _respond(request, request_json, record, misbehaviour)
        calls.update(record)
        return reply

    async def run_batch_item(raw: bytes, call_id: str, batch_id: str, fail: bool) -> Reply:
        """A batch item takes the live path without latency or drawn failures; ``fail`` forces a 500."""
        return await answer(raw, call_id, batch_id=batch_id, misbehaviour="server_error" if fail else None)

    def _respond(
        request: ChatCompletionRequest,
        request_json: dict[str, Any],
        record: CallRecord,
        misbehaviour: Misbehaviour | None,
    ) -> tuple[Reply, CallRecord]:
        if misbehaviour == "rate_limited":
            headers = {"retry-after": f"{config.retry_after_s:g}"} if config.retry_after_s is not None else {}
            body = error_body("Rate limit reached, slow down.", "rate_limit_error", "rate_limit_exceeded")
            return Reply(429, body, headers), record.model_copy(update={"status": 429})
        if misbehaviour == "server_error":
            body = error_body("The server had an error processing your request.", "server_error")
            return Reply(500, body), record.model_copy(update={"status": 500})
        if misbehaviour == "hang":
            body = error_body("The server hung past its deadline.", "timeout")
            return Reply(504, body), record.model_copy(update={"status": 504})
        if request.model not in config.models:
            body = error_body(f"The model `{request.model}` does not exist.", "invalid_request_error")
            return Reply(404, body), record.model_copy(update={"status": 404})
        if config.context_limit_tokens is not None and record.prompt_tokens > config.context_limit_tokens:
            message = (
                f"This model's maximum context length is {config.context_limit_tokens} tokens. "
                f"However, your messages resulted in {record.prompt_tokens} tokens."
            )
            body = error_body(message, "invalid_request_error", "context_length_exceeded")
            return Reply(400, body), record.model_copy(update={"status": 400})

        if config.responder is not None:
            text = config.responder(request_json)
        else:
            text = default_responder(request_json, config.reply_json_when_response_format)
        words = text.split()
        limit = request.max_completion_tokens or request.max_tokens
        finish_reason = "stop"
        if limit is not None and len(words) > limit:
            text, words, finish_reason = " ".join(words[:limit]), words[:limit], "length"
        completion_tokens = len(words)
        body = {
            "id": f"chatcmpl-{record.id}",
            "object": "chat.completion",
            "created": int(record.started_at),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": record.prompt_tokens + completion_tokens,
            },
        }
        if cache is not None:
            body["usage"]["prompt_tokens_details"] = {"cached_tokens": record.cached_prompt_tokens}
        return Reply(200, body), record.model_copy(update={"completion_tokens": completion_tokens})

    async def list_calls(_request: Request) -> JSONResponse:
        return JSONResponse([record.model_dump(mode="json") for record in calls.records.values()])

    async def reset_calls(_request: Request) -> JSONResponse:
        calls.reset()
        return JSONResponse({"status": "reset"})

    async def stats(_request: Request) -> JSONResponse:
        return JSONResponse(calls.stats())

    return Starlette(
        routes=[
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/_calls", list_calls, methods=["GET"]),
            Route("/_calls", reset_calls, methods=["DELETE"]),
            Route("/_stats", stats, methods=["GET"]),
            *batch_routes(config, unauthorised, run_batch_item),
        ]
    )


# --- running it ----------------------------------------------------------------------------------


@dataclass
class RunningServer:
    """A server started by ``serve_in_thread``; ``base_url`` ends in ``/v1`` like OpenAI's."""

    base_url: str
    root_url: str
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve_in_thread(config: TestServerConfig, port: int = 0, host: str = "127.0.0.1") -> RunningServer:
    """Start the server in a daemon thread; port 0 picks a free port, reported in ``base_url``."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, name="openai-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    root_url = f"http://{host}:{bound_port}"
    return RunningServer(base_url=f"{root_url}/v1", root_url=root_url, _server=server, _thread=thread)


def main(
    port: int = typer.Option(8001, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    model: list[str] = typer.Option(["test-model"], help="Served model id (repeatable)."),
    latency: float = typer.Option(0.0, help="Fixed latency per call, seconds."),
    latency_jitter: float = typer.Option(0.0, help="Extra uniform latency, seconds."),
    fail_429_rate: float = typer.Option(0.0, help="Share of calls answered 429."),
    fail_500_rate: float = typer.Option(0.0, help="Share of calls answered 500."),
    timeout_rate: float = typer.Option(0.0, help="Share of calls that hang for --hang."),
    hang: float = typer.Option(600.0, help="Seconds a hanging call sleeps."),
    retry_after: float | None = typer.Option(None, help="Retry-After seconds on 429s."),
    context_limit_tokens: int | None = typer.Option(None, help="Prompt token limit (400 beyond)."),
    prefix_cache_block: int | None = typer.Option(None, help="Report cached prompt tokens in blocks of N."),
    seed: int = typer.Option(0, help="Seed for failures and jitter."),
    batch_completion_s: float = typer.Option(0.0, help="Seconds a batch stays in_progress before it runs."),
) -> None:
    """Serve the OpenAI-compatible test server until interrupted."""
    config = TestServerConfig(
        models=model,
        latency_s=latency,
        latency_jitter_s=latency_jitter,
        fail_429_rate=fail_429_rate,
        fail_500_rate=fail_500_rate,
        timeout_rate=timeout_rate,
        hang_s=hang,
        retry_after_s=retry_after,
        context_limit_tokens=context_limit_tokens,
        prefix_cache_block_tokens=prefix_cache_block,
        seed=seed,
        batch_completion_s=batch_completion_s,
    )
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    typer.run(main)
