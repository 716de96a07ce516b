"""OpenAIHttpBackend through the real openai client against the real OpenAI-compatible test server."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from devkit.openai_test_server import TOKENS_PER_IMAGE, RunningServer, TestServerConfig, serve_in_thread
from shared.backends.base import ChatMessage, GenerationRequest
from shared.backends.build import build_backend
from shared.backends.errors import ContextLengthError, PermanentBackendError, TransientBackendError
from shared.backends.openai_http import OpenAIHttpBackend
from shared.contracts.events import SamplingParams
from shared.registry import ModelEntry

API_KEY = "sk-test-0123456789abcdef"
MODEL = "test-model"


def encoded_image(image_format: str, color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, image_format)
    return buffer.getvalue()


def question(text: str = "What colour is the square?", **request_fields: object) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", text=text)],
        images=[encoded_image("PNG", "red")],
        **request_fields,
    )


def calls(server: RunningServer) -> list[dict]:
    return httpx.get(f"{server.root_url}/_calls").json()


def stats(server: RunningServer) -> dict:
    return httpx.get(f"{server.root_url}/_stats").json()


@pytest.fixture
def start_server() -> Iterator:
    servers: list[RunningServer] = []

    def start(**config: object) -> RunningServer:
        server = serve_in_thread(TestServerConfig(api_key=SecretStr(API_KEY), **config))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def make_backend() -> Iterator:
    backends: list[OpenAIHttpBackend] = []

    def make(server: RunningServer, **options: object) -> OpenAIHttpBackend:
        options = {"backoff_base_s": 0.01, "api_key": SecretStr(API_KEY), **options}
        backend = OpenAIHttpBackend(MODEL, server.base_url, **options)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def test_request_shape_images_usage_and_finish_reason(start_server, make_backend) -> None:
    server = start_server()
    backend = make_backend(server)
    request = GenerationRequest(
        messages=[
            ChatMessage(role="system", text="You describe images."),
            ChatMessage(role="user", text="Compare the two squares please"),
        ],
        images=[encoded_image("PNG", "red"), encoded_image("JPEG", "blue")],
        params=SamplingParams(temperature=0.7, top_p=0.9, max_tokens=3, seed=7),
    )

    [result] = backend.generate([request])

    [call] = calls(server)
    assert call["status"] == 200
    assert call["n_images"] == 2
    assert call["first_user_text"] == "Compare the two squares please"
    assert call["prompt_tokens"] == 3 + 5 + 2 * TOKENS_PER_IMAGE
    assert (result.prompt_tokens, result.completion_tokens) == (call["prompt_tokens"], 3)
    assert call["completion_tokens"] == 3
    assert result.finish_reason == "length"
    assert len(result.text.split()) == 3
    assert result.latency_s > 0


def test_results_keep_request_order_and_stop_reason(start_server, make_backend) -> None:
    server = start_server(latency_s=0.05, latency_jitter_s=0.1)
    backend = make_backend(server)
    requests = [question(f"question number {index}") for index in range(10)]

    results = backend.generate(requests)

    by_text = {call["first_user_text"]: call for call in calls(server)}
    assert [r.prompt_tokens for r in results] == [
        by_text[r.messages[0].text]["prompt_tokens"] for r in requests
    ]
    assert len({r.text for r in results}) == 10  # the default reply depends on the prompt
    assert all(r.finish_reason == "stop" for r in results)


def test_response_format_json_schema_reaches_the_server(start_server, make_backend) -> None:
    server = start_server()
    backend = make_backend(server)
    schema = {
        "type": "object",
        "properties": {
            "rating": {"type": "integer", "minimum": 1, "maximum": 5},
            "rationale": {"type": "string"},
        },
        "required": ["rating", "rationale"],
    }

    [result] = backend.generate([question(response_format=schema)])

    reply = json.loads(result.text)
    assert reply["rating"] == 1
    assert isinstance(reply["rationale"], str)


def test_a_registry_chat_template_override_reaches_the_server_with_every_request(
    start_server, tmp_path
) -> None:
    server = start_server()
    template = "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}{% endfor %}"
    (tmp_path / "template.jinja").write_text(template)
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY)
    entry = ModelEntry(
        id="m1",
        backend="openai",
        model=MODEL,
        base_url=server.base_url,
        api_key_file=str(key_file),
        chat_template=str(tmp_path / "template.jinja"),
    )
    backend = build_backend(entry)
    try:
        backend.generate([question(), question("And the border?")])
    finally:
        backend.close()

    assert [call["chat_template"] for call in calls(server)] == [template, template]


def test_a_missing_chat_template_file_stops_the_backend_from_being_built(tmp_path) -> None:
    entry = ModelEntry(
        id="m1",
        backend="openai",
        model=MODEL,
        base_url="http://127.0.0.1:9/v1",
        chat_template=str(tmp_path / "no"),
    )
    with pytest.raises(ValueError, match="chat_template .* is not a file"):
        build_backend(entry)


def test_429_waits_for_retry_after_then_succeeds(start_server, make_backend) -> None:
    server = start_server(failure_script=["rate_limited"], retry_after_s=1.0)
    registry = CollectorRegistry()
    backend = make_backend(server, registry=registry)

    started = time.monotonic()
    [result] = backend.generate([question()])
    waited = time.monotonic() - started

    assert waited >= 1.0
    assert result.text
    assert [call["status"] for call in calls(server)] == [429, 200]
    errors = registry.get_sample_value("vlf_backend_errors_total", {"model": MODEL, "kind": "rate_limited"})
    assert errors == 1


def test_500_then_success(start_server, make_backend) -> None:
    server = start_server(failure_script=["server_error", "server_error"])
    backend = make_backend(server)

    [result] = backend.generate([question()])

    assert result.text
    assert [call["status"] for call in calls(server)] == [500, 500, 200]


def test_persistent_500_becomes_transient_error_with_last_status(start_server, make_backend) -> None:
    server = start_server(fail_500_rate=1.0)
    backend = make_backend(server, max_retries=2)

    with pytest.raises(TransientBackendError, match="status 500: The server had an error"):
        backend.generate([question()])

    assert len(calls(server)) == 3


def test_timeout_is_retried_then_succeeds(start_server, make_backend) -> None:
    server = start_server(failure_script=["hang"], hang_s=5)
    backend = make_backend(server, timeout_s=0.5)

    [result] = backend.generate([question()])

    assert result.text
    assert len(calls(server)) == 2


def test_persistent_timeouts_raise_transient_error(start_server, make_backend) -> None:
    server = start_server(timeout_rate=1.0, hang_s=5)
    registry = CollectorRegistry()
    backend = make_backend(server, timeout_s=0.3, max_retries=2, registry=registry)

    started = time.monotonic()
    with pytest.raises(TransientBackendError, match="gave up after 3 attempts"):
        backend.generate([question()])

    assert time.monotonic() - started >= 0.9
    assert len(calls(server)) == 3
    assert registry.get_sample_value("vlf_backend_errors_total", {"model": MODEL, "kind": "timeout"}) == 3
    transient = registry.get_sample_value(
        "vlf_backend_requests_total", {"model": MODEL, "outcome": "transient"}
    )
    assert transient == 1


def test_bad_request_is_permanent_with_the_server_message_and_not_retried(start_server, make_backend) -> None:
    server = start_server()
    backend = make_backend(server)

    with pytest.raises(PermanentBackendError, match="invalid request") as caught:
        backend.generate([question(params=SamplingParams(temperature=3.0))])

    assert not isinstance(caught.value, ContextLengthError)
    assert "temperature" in str(caught.value)
    assert [call["status"] for call in calls(server)] == [400]


def test_unknown_model_is_permanent(start_server, make_backend) -> None:
    server = start_server(models=["another-model"])
    backend = make_backend(server)

    with pytest.raises(PermanentBackendError, match="`test-model` does not exist"):
        backend.generate([question()])


def test_context_length_error(start_server, make_backend) -> None:
    server = start_server(context_limit_tokens=50)
    registry = CollectorRegistry()
    backend = make_backend(server, registry=registry)

    with pytest.raises(ContextLengthError, match="maximum context length is 50 tokens"):
        backend.generate([question()])

    assert len(calls(server)) == 1
    assert (
        registry.get_sample_value("vlf_backend_errors_total", {"model": MODEL, "kind": "context_length"}) == 1
    )


def test_concurrency_limit_is_shared_by_calling_threads(start_server, make_backend) -> None:
    server = start_server(latency_s=0.2)
    backend = make_backend(server, concurrency=4)
    results: dict[int, int] = {}

    def worker(worker_index: int) -> None:
        results[worker_index] = len(
            backend.generate([question(f"worker {worker_index} q {i}") for i in range(6)])
        )

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == {0: 6, 1: 6, 2: 6}
    assert stats(server)["max_in_flight"] == 4
    assert stats(server)["by_status"] == {"200": 18}


def test_metrics_count_requests_tokens_and_latency(start_server, make_backend) -> None:
    server = start_server(latency_s=0.05)
    registry = CollectorRegistry()
    backend = make_backend(server, registry=registry)

    results = backend.generate([question(), question("another question")])

    labels = {"model": MODEL}
    assert registry.get_sample_value("vlf_backend_requests_total", {**labels, "outcome": "ok"}) == 2
    tokens_in = registry.get_sample_value("vlf_backend_tokens_total", {**labels, "direction": "in"})
    tokens_out = registry.get_sample_value("vlf_backend_tokens_total", {**labels, "direction": "out"})
    assert tokens_in == sum(r.prompt_tokens for r in results)
    assert tokens_out == sum(r.completion_tokens for r in results)
    assert registry.get_sample_value("vlf_backend_latency_seconds_count", labels) == 2
    assert registry.get_sample_value("vlf_backend_latency_seconds_sum", labels) >= 0.1
    assert registry.get_sample_value("vlf_backend_in_flight", labels) == 0


def test_check_lists_models_and_fails_when_unreachable(start_server, make_backend) -> None:
    server = start_server()
    backend = make_backend(server)
    backend.check()

    server.stop()
    with pytest.raises(TransientBackendError, match="unreachable"):
        backend.check()


def test_api_key_is_sent_as_bearer_and_never_logged(start_server, make_backend, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for noisy_logger in ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "aiohttp"):
        caplog.set_level(logging.DEBUG, logger=noisy_logger)
    server = start_server(failure_script=["rate_limited", "server_error"])
    good = make_backend(server)
    wrong_key = "sk-wrong-key-fedcba9876543210"
    bad = make_backend(server, api_key=SecretStr(wrong_key))

    [result] = good.generate([question()])  # the server only answers the right bearer token
    with pytest.raises(PermanentBackendError, match="status 401: Incorrect API key") as caught:
        bad.generate([question()])
    good.check()

    assert result.text
    assert "retrying" in caplog.text  # the retries above were logged...
    for key in (API_KEY, wrong_key):  # ...and nothing anywhere shows a key
        assert key not in caplog.text
        assert key not in str(caught.value) and key not in repr(caught.value)
        assert key not in repr(good) and key not in str(bad)


def test_server_holds_many_slow_requests_at_once(start_server, make_backend) -> None:
    server = start_server(latency_s=2.0)
    backend = make_backend(server, concurrency=100)

    results = backend.generate([question(f"slow question {index}") for index in range(100)])

    assert len(results) == 100
    assert stats(server)["max_in_flight"] == 100  # one 2 s wave, not a queue of them
