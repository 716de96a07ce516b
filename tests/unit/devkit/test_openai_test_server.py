"""The test server's pure rules: token counting, prefix caching, validation of images, failure draws,
JSON replies."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from devkit.openai_test_server import (
    TOKENS_PER_IMAGE,
    ChatCompletionRequest,
    PrefixCache,
    TestServerConfig,
    data_url_bytes,
    default_responder,
    draw_misbehaviour,
    is_fetched,
    latency_jitter_s,
    prompt_token_sequence,
    verify_image,
)


def png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "white").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_prompt_tokens_are_words_plus_a_fixed_cost_per_image() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": png_data_url()}},
                        {"type": "text", "text": "what is shown here"},
                    ],
                },
            ],
        }
    )
    assert len(prompt_token_sequence(request)) == 2 + 4 + TOKENS_PER_IMAGE


def test_image_urls_must_be_decodable_data_urls_unless_fetched() -> None:
    verify_image(data_url_bytes(png_data_url()))
    assert is_fetched("https://example.com/cat.png") and is_fetched("http://10.0.0.1/cat.png")
    with pytest.raises(ValueError, match="base64 data URL"):
        data_url_bytes("ftp://example.com/cat.png")
    with pytest.raises(ValueError, match="not valid base64"):
        data_url_bytes("data:image/png;base64,***")
    with pytest.raises(ValueError, match="does not decode"):
        verify_image(data_url_bytes("data:image/png;base64," + base64.b64encode(b"not an image").decode()))


def test_failure_draws_follow_the_script_then_the_seeded_rates() -> None:
    config = TestServerConfig(failure_script=["hang"], fail_429_rate=0.3, fail_500_rate=0.2, seed=5)
    draws = [draw_misbehaviour(config, index) for index in range(2000)]

    assert draws[0] == "hang"
    assert draws == [draw_misbehaviour(config, index) for index in range(2000)]
    assert 0.25 < draws.count("rate_limited") / 2000 < 0.35
    assert 0.15 < draws.count("server_error") / 2000 < 0.25
    assert draws[1:].count("hang") == 0


def test_latency_jitter_is_seeded_per_call_and_within_its_bound() -> None:
    config = TestServerConfig(latency_jitter_s=0.05, seed=3)
    jitters = [latency_jitter_s(config, index) for index in range(500)]

    assert jitters == [latency_jitter_s(config, index) for index in range(500)]
    assert all(0 <= jitter <= 0.05 for jitter in jitters) and len(set(jitters)) == 500
    assert latency_jitter_s(TestServerConfig(seed=3), 7) == 0.0


def test_default_reply_is_deterministic_and_json_when_a_schema_is_asked() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "rate it"}]}
    assert default_responder(request) == default_responder(request)
    assert default_responder(request) != default_responder(
        {**request, "messages": [{"role": "user", "content": "x"}]}
    )

    schema = {
        "type": "object",
        "properties": {
            "scores": {"type": "array", "items": {"enum": ["good", "bad"]}},
            "ok": {"type": "boolean"},
        },
    }
    with_format = {**request, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    assert json.loads(default_responder(with_format)) == {"scores": ["good"], "ok": True}
    assert not default_responder(with_format, reply_json=False).startswith("{")


def _judge_request(fixed: str, image: str, quoted: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": fixed},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image}},
                        {"type": "text", "text": quoted},
                    ],
                },
            ],
        }
    )


def test_the_prefix_cache_serves_whole_blocks_of_a_prefix_seen_before_and_nothing_after_a_change() -> None:
    cache = PrefixCache(block_tokens=4)
    fixed = " ".join(f"rubric{i}" for i in range(10))  # 10 tokens: two whole blocks
    first = prompt_token_sequence(_judge_request(fixed, png_data_url(), "answers of one"))
    assert cache.cached_tokens(first) == 0
    assert cache.cached_tokens(first) == len(first) // 4 * 4, "the same prompt again: every whole block"

    other_image = "data:image/png;base64," + base64.b64encode(b"another image").decode()
    second = prompt_token_sequence(_judge_request(fixed, other_image, "answers of one"))
    assert cache.cached_tokens(second) == 8, "the fixed part's whole blocks; the image differs after it"

    moved = prompt_token_sequence(_judge_request("changed " + fixed, png_data_url(), "answers of one"))
    assert cache.cached_tokens(moved) == 0, "a change at the start leaves nothing cached after it"
