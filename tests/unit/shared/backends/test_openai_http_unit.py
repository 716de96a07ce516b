"""Pure parts of the OpenAI HTTP backend: request building, error classification, Retry-After."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx2
import openai
import pytest
from PIL import Image
from pydantic import SecretStr

from shared.backends.base import ChatMessage, GenerationRequest
from shared.backends.errors import PermanentBackendError, TransientBackendError
from shared.backends.openai_http import (
    build_completion_kwargs,
    build_messages,
    error_kind,
    image_data_url,
    image_mime_type,
    is_transient,
    resolve_api_key,
    result_from_completion,
    retry_after_s,
    server_message,
)
from shared.contracts.events import SamplingParams


def encoded_image(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "green").save(buffer, image_format)
    return buffer.getvalue()


def status_error(status: int, body: dict | None = None, headers: dict | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://server/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, json=body or {}, request=request)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize(
    ("image_format", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_image_mime_type_from_magic_bytes(image_format: str, mime: str) -> None:
    assert image_mime_type(encoded_image(image_format)) == mime


def test_unknown_image_format_is_permanent() -> None:
    with pytest.raises(PermanentBackendError, match="unrecognised image format"):
        image_mime_type(b"BM not really a bitmap")
    with pytest.raises(PermanentBackendError, match="unrecognised image format"):
        image_data_url(b"BM not really a bitmap")


def test_a_bitmap_which_intake_accepts_travels_as_png() -> None:
    """BMP passes the default image policy, but OpenAI-compatible servers take no image/bmp."""
    url = image_data_url(encoded_image("BMP"))

    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.size == (4, 4) and decoded.getpixel((0, 0)) == (0, 128, 0)


def test_images_go_before_the_text_of_the_first_user_message_only() -> None:
    png = encoded_image("PNG")
    request = GenerationRequest(
        messages=[
            ChatMessage(role="system", text="sys"),
            ChatMessage(role="user", text="first"),
            ChatMessage(role="assistant", text="answer"),
            ChatMessage(role="user", text="second"),
        ],
        images=[png],
    )

    messages = build_messages(request)

    assert messages[0] == {"role": "system", "content": "sys"}
    image_part, text_part = messages[1]["content"]
    assert image_part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(png).decode()
    assert text_part == {"type": "text", "text": "first"}
    assert messages[2:] == [{"role": "assistant", "content": "answer"}, {"role": "user", "content": "second"}]


def test_image_urls_go_as_they_are_for_the_server_to_fetch() -> None:
    request = GenerationRequest(
        messages=[ChatMessage(role="user", text="what?")], image_urls=["https://cdn.example.com/a.png"]
    )
    [message] = build_messages(request)
    assert message["content"] == [
        {"type": "image_url", "image_url": {"url": "https://cdn.example.com/a.png"}},
        {"type": "text", "text": "what?"},
    ]


def test_a_request_carries_its_images_one_way() -> None:
    with pytest.raises(ValueError, match="bytes or as URLs, not both"):
        GenerationRequest(
            messages=[ChatMessage(role="user", text="x")],
            images=[encoded_image("PNG")],
            image_urls=["https://cdn.example.com/a.png"],
        )


def test_text_only_requests_use_plain_string_content() -> None:
    request = GenerationRequest(messages=[ChatMessage(role="user", text="hi")])
    assert build_messages(request) == [{"role": "user", "content": "hi"}]


def test_images_without_a_user_message_are_rejected() -> None:
    request = GenerationRequest(
        messages=[ChatMessage(role="system", text="s")], images=[encoded_image("PNG")]
    )
    with pytest.raises(PermanentBackendError, match="no user message"):
        build_messages(request)


def test_completion_kwargs_carry_sampling_seed_and_json_schema() -> None:
    schema = {"type": "object", "properties": {"rating": {"type": "integer"}}}
    request = GenerationRequest(
        messages=[ChatMessage(role="user", text="rate")],
        params=SamplingParams(temperature=0.5, top_p=0.8, max_tokens=12, seed=3),
        response_format=schema,
    )

    kwargs = build_completion_kwargs("judge", request)

    assert (kwargs["model"], kwargs["temperature"], kwargs["top_p"], kwargs["max_tokens"]) == (
        "judge",
        0.5,
        0.8,
        12,
    )
    assert kwargs["seed"] == 3
    assert kwargs["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema},
    }


def test_completion_kwargs_omit_unset_seed_format_and_chat_template() -> None:
    kwargs = build_completion_kwargs("m", GenerationRequest(messages=[ChatMessage(role="user", text="x")]))
    assert "seed" not in kwargs and "response_format" not in kwargs and "chat_template" not in kwargs


def test_completion_kwargs_carry_a_chat_template_override() -> None:
    request = GenerationRequest(messages=[ChatMessage(role="user", text="x")])
    kwargs = build_completion_kwargs("m", request, chat_template="{{ messages[0]['content'] }}")
    assert kwargs["chat_template"] == "{{ messages[0]['content'] }}"


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (408, "request timeout", "timeout"),
        (409, "conflict", "conflict"),
        (429, "slow down", "rate_limited"),
        (500, "oops", "server_error"),
        (503, "overloaded", "server_error"),
        (400, "This model's maximum context length is 4096 tokens.", "context_length"),
        (400, "The decoder prompt is longer than the maximum model length of 32768", "context_length"),
        (400, "too many tokens in the prompt", "context_length"),
        (400, "temperature must be at most 2", "client_error"),
        (401, "Incorrect API key", "client_error"),
        (404, "model does not exist", "client_error"),
    ],
)
def test_status_errors_are_classified(status: int, message: str, kind: str) -> None:
    error = status_error(status, {"error": {"message": message}})
    assert error_kind(error) == kind
    assert is_transient(error) == (kind in {"timeout", "conflict", "rate_limited", "server_error"})


def test_timeouts_and_connection_errors_are_transient() -> None:
    request = httpx2.Request("POST", "http://server/v1/chat/completions")
    assert error_kind(openai.APITimeoutError(request=request)) == "timeout"
    assert error_kind(openai.APIConnectionError(request=request)) == "connection"
    assert is_transient(openai.APITimeoutError(request=request))


def test_server_message_comes_from_the_openai_error_body() -> None:
    assert server_message(status_error(400, {"error": {"message": "bad temperature"}})) == "bad temperature"
    assert server_message(status_error(502, None)) == "Error code: 502"


def test_retry_after_seconds_milliseconds_and_http_date() -> None:
    assert retry_after_s(status_error(429, headers={"retry-after": "3"})) == 3.0
    assert retry_after_s(status_error(429, headers={"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    in_ten_s = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8 <= retry_after_s(status_error(429, headers={"retry-after": in_ten_s})) <= 10
    assert retry_after_s(status_error(429, headers={"retry-after": "soon"})) is None
    assert retry_after_s(status_error(429)) is None


def test_resolve_api_key_prefers_the_secret_file(tmp_path, monkeypatch) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("sk-from-file\n")
    monkeypatch.setenv("VLF_TEST_JUDGE_KEY", "sk-from-env")

    assert resolve_api_key("VLF_TEST_JUDGE_KEY", str(secret_file)) == SecretStr("sk-from-file")
    assert resolve_api_key("VLF_TEST_JUDGE_KEY", None) == SecretStr("sk-from-env")
    assert resolve_api_key("VLF_TEST_UNSET_KEY", None) is None
    assert resolve_api_key(None, None) is None


def test_result_from_completion_is_lenient_about_extra_fields_and_reasons() -> None:
    body = {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "abort", "stop_reason": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        "kv_transfer_params": None,
    }
    result = result_from_completion(json.dumps(body).encode(), 0.25)
    assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens) == (
        "hi",
        "abort",
        5,
        1,
    )
    assert result.latency_s == 0.25


def test_cached_prompt_tokens_are_read_from_the_usage_details() -> None:
    """As OpenAI reports them, and vLLM with --enable-prompt-tokens-details; absent or null: none."""
    usage = {"prompt_tokens": 2000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 1536}}
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    assert result_from_completion(json.dumps(body).encode(), 0.1).cached_prompt_tokens == 1536
    for details in (None, {}, {"cached_tokens": None}):
        body["usage"] = {**usage, "prompt_tokens_details": details}
        assert result_from_completion(json.dumps(body).encode(), 0.1).cached_prompt_tokens == 0


def test_more_cached_than_prompt_tokens_is_a_broken_server() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}}
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    with pytest.raises(TransientBackendError, match="cached_prompt_tokens"):
        result_from_completion(json.dumps(body).encode(), 0.1)


def test_a_content_given_as_parts_is_their_text() -> None:
    parts = [
        {"type": "text", "text": "A red "},
        {"type": "refusal", "refusal": "-"},
        {"type": "text", "text": "square."},
    ]
    body = {"choices": [{"message": {"content": parts}, "finish_reason": "stop"}]}

    assert result_from_completion(json.dumps(body).encode(), 0.1).text == "A red square."


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices": []}',
        b"<html>bad gateway</html>",
        b'{"choices": [{"message": {"content": 7}}]}',
        b'{"choices": [{"message": {"content": "x"}, "finish_reason": 3}]}',
        b'{"choices": [{"message": {"content": "x"}}], "usage": [1]}',
        b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": -1}}',
    ],
)
def test_a_body_that_is_no_chat_completion_is_transient(body: bytes) -> None:
    """Each of these used to escape as a ValidationError or AttributeError and stop the service."""
    with pytest.raises(TransientBackendError, match="malformed chat completion"):
        result_from_completion(body, 0.1)


def test_a_malformed_completion_counts_as_a_retryable_server_error() -> None:
    error = TransientBackendError("malformed chat completion")
    assert error_kind(error) == "server_error"
    assert is_transient(error)
