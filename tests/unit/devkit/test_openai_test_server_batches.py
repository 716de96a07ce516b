"""The test server's Batch API through the real ``openai`` SDK: files, batches, polling, failures,
expiry, cancellation, listing and the call log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch
from pydantic import SecretStr

from devkit.openai_test_server import TestServerConfig, serve_in_thread

MODEL = "test-model"


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def batch_file(bodies: dict[str, dict[str, Any]]) -> bytes:
    """A batch input file with one chat completion line per custom_id."""
    lines = [
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
        for custom_id, body in bodies.items()
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@contextmanager
def served(**config: Any) -> Iterator[tuple[openai.OpenAI, str]]:
    """An SDK client against a fresh server, and the server's root URL for ``/_calls``."""
    with serve_in_thread(TestServerConfig(**config)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        yield client, server.root_url


def submit(client: openai.OpenAI, content: bytes, **metadata: str) -> Batch:
    input_file = client.files.create(file=("requests.jsonl", content), purpose="batch")
    return client.batches.create(
        input_file_id=input_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata or None,
    )


def wait_for(client: openai.OpenAI, batch_id: str, timeout_s: float = 10.0) -> Batch:
    deadline = time.monotonic() + timeout_s
    while (batch := client.batches.retrieve(batch_id)).status in ("validating", "in_progress", "finalizing"):
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.05)
    return batch


def file_lines(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """custom_id -> line of an output or error file."""
    assert file_id is not None
    lines = [json.loads(row) for row in client.files.content(file_id).text.splitlines()]
    return {line["custom_id"]: line for line in lines}


def test_a_batch_answers_every_line_as_a_live_call_with_the_same_body_would() -> None:
    bodies = {"short": chat_body("what is shown"), "cut": chat_body("and here", max_tokens=3)}
    with served() as (client, _root):
        batch = submit(client, batch_file(bodies))
        assert batch.status == "in_progress" and batch.request_counts is not None
        assert batch.request_counts.total == 2

        done = wait_for(client, batch.id)
        assert done.status == "completed" and done.completed_at is not None
        assert done.error_file_id is None and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
        output = file_lines(client, done.output_file_id)
        live = {custom_id: client.chat.completions.create(**body) for custom_id, body in bodies.items()}

    assert set(output) == {"short", "cut"}
    for custom_id, line in output.items():
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == live[custom_id].choices[0].message.content
        assert body["choices"][0]["finish_reason"] == live[custom_id].choices[0].finish_reason
        assert body["usage"]["prompt_tokens"] == live[custom_id].usage.prompt_tokens
        assert body["usage"]["completion_tokens"] == live[custom_id].usage.completion_tokens
    assert output["cut"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert output["cut"]["response"]["body"]["usage"]["completion_tokens"] == 3


def test_batch_items_share_the_prefix_cache_of_live_calls() -> None:
    prompt = "one two three four five six"
    with served(prefix_cache_block_tokens=2) as (client, _root):
        client.chat.completions.create(**chat_body(prompt))
        done = wait_for(client, submit(client, batch_file({"again": chat_body(prompt)})).id)
        usage = file_lines(client, done.output_file_id)["again"]["response"]["body"]["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 6}


def test_a_batch_stays_in_progress_until_its_completion_time_and_runs_nothing_before() -> None:
    with served(batch_completion_s=0.6) as (client, root):
        batch = submit(client, batch_file({"a": chat_body("hello")}))
        assert client.batches.retrieve(batch.id).status == "in_progress"
        assert client.batches.list().data[0].status == "in_progress"
        assert httpx.get(f"{root}/_calls").json() == []

        time.sleep(0.7)
        assert client.batches.retrieve(batch.id).status == "completed"


def test_failed_custom_ids_and_refused_requests_land_in_the_error_file_with_their_status() -> None:
    bodies = {
        "ok": chat_body("fine"),
        "boom": chat_body("fails"),
        "no-model": {**chat_body("who"), "model": "other-model"},
        "too-long": chat_body("a b c d e f g h i j"),
    }
    with served(batch_fail_custom_ids=["boom"], context_limit_tokens=5) as (client, _root):
        done = wait_for(client, submit(client, batch_file(bodies)).id)
        errors = file_lines(client, done.error_file_id)
        assert client.files.retrieve(done.error_file_id).purpose == "batch_output"
        assert set(file_lines(client, done.output_file_id)) == {"ok"}

    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 3)
    statuses = {custom_id: line["response"]["status_code"] for custom_id, line in errors.items()}
    assert statuses == {"boom": 500, "no-model": 404, "too-long": 400}
    assert errors["boom"]["response"]["body"]["error"]["type"] == "server_error"
    assert errors["too-long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert all(line["error"] is None for line in errors.values())


def test_an_expired_batch_ran_its_first_half_and_reports_the_rest_as_expired() -> None:
    bodies = {f"item-{index}": chat_body(f"question {index}") for index in range(5)}
    with served(batch_expire=True) as (client, root):
        done = wait_for(client, submit(client, batch_file(bodies)).id)
        output = file_lines(client, done.output_file_id)
        errors = file_lines(client, done.error_file_id)
        calls = httpx.get(f"{root}/_calls").json()

    assert done.status == "expired" and done.expired_at is not None and done.completed_at is None
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 3)
    assert set(output) == {"item-0", "item-1"} and set(errors) == {"item-2", "item-3", "item-4"}
    assert errors["item-3"]["response"] is None
    assert errors["item-3"]["error"] == {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    assert len(calls) == 2, "expired items never ran"


def test_cancel_sends_unrun_items_to_the_error_file_and_a_finished_batch_cannot_be_cancelled() -> None:
    with served(batch_completion_s=60) as (client, _root):
        batch = submit(client, batch_file({"a": chat_body("x"), "b": chat_body("y")}))
        cancelled = client.batches.cancel(batch.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
        assert cancelled.output_file_id is None
        errors = file_lines(client, cancelled.error_file_id)
        assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}
        assert set(errors) == {"a", "b"}
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)


BAD_FILES = {
    "not json": (b'{"custom_id": "a", "method": "POST",\n', 1),
    "a repeated custom_id": (
        batch_file({"a": chat_body("x")})
        + batch_file({"b": chat_body("y")})
        + batch_file({"a": chat_body("z")}),
        3,
    ),
    "another endpoint": (
        batch_file({"a": chat_body("x")})
        + batch_file({"b": chat_body("y")}).replace(b"chat/completions", b"embeddings"),
        2,
    ),
    "a body without messages": (batch_file({"a": chat_body("x"), "b": {"model": MODEL, "messages": []}}), 2),
    "a blank line": (batch_file({"a": chat_body("x")}) + b"\n" + batch_file({"b": chat_body("y")}), 2),
}


@pytest.mark.parametrize("content,line", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_batch_input_line_is_refused_naming_its_line(content: bytes, line: int) -> None:
    with served() as (client, _root):
        with pytest.raises(openai.BadRequestError, match=f"line {line}:"):
            client.files.create(file=("bad.jsonl", content), purpose="batch")
        assert client.files.list().data == []


def test_unknown_ids_are_404_and_unusable_inputs_400() -> None:
    with served() as (client, _root):
        for call in (
            lambda: client.files.retrieve("file-nope"),
            lambda: client.files.content("file-nope"),
            lambda: client.batches.retrieve("batch_nope"),
            lambda: client.batches.cancel("batch_nope"),
        ):
            with pytest.raises(openai.NotFoundError):
                call()

        good = client.files.create(file=("in.jsonl", batch_file({"a": chat_body("x")})), purpose="batch")
        other = client.files.create(file=("notes.txt", b"not a batch"), purpose="user_data")
        for input_file_id, endpoint, window in (
            ("file-nope", "/v1/chat/completions", "24h"),
            (other.id, "/v1/chat/completions", "24h"),
            (good.id, "/v1/embeddings", "24h"),
            (good.id, "/v1/chat/completions", "48h"),
        ):
            with pytest.raises(openai.BadRequestError):
                client.batches.create(
                    input_file_id=input_file_id,
                    endpoint=endpoint,  # type: ignore[arg-type]
                    completion_window=window,  # type: ignore[arg-type]
                )
        assert client.batches.list().data == []


def test_batches_list_newest_first_with_metadata_so_a_client_finds_its_batch() -> None:
    with served() as (client, _root):
        ids = [
            submit(client, batch_file({"a": chat_body(f"run {run}")}), run=str(run)).id for run in range(3)
        ]
        first_page = client.batches.list(limit=2)
        every = list(client.batches.list(limit=2))  # the SDK follows ``after`` while ``has_more``

    assert [batch.id for batch in first_page.data] == [ids[2], ids[1]] and first_page.has_more
    assert [batch.id for batch in every] == ids[::-1]
    assert {batch.metadata["run"]: batch.id for batch in every if batch.metadata} == {
        str(run): batch_id for run, batch_id in enumerate(ids)
    }
    assert all(batch.status == "completed" for batch in every), "a list polls the batches too"


def test_files_list_shows_uploads_with_their_filename_and_filters_by_purpose() -> None:
    content = batch_file({"a": chat_body("x")})
    with served() as (client, _root):
        uploaded = client.files.create(file=("my-requests.jsonl", content), purpose="batch")
        done = wait_for(
            client,
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id,
        )
        batch_files = client.files.list(purpose="batch").data
        every = client.files.list().data
        assert client.files.content(uploaded.id).content == content

    assert (
        uploaded.id.startswith("file-") and uploaded.bytes == len(content) and uploaded.status == "processed"
    )
    assert [(f.id, f.filename, f.purpose) for f in batch_files] == [
        (uploaded.id, "my-requests.jsonl", "batch")
    ]
    assert [f.id for f in every] == [done.output_file_id, uploaded.id], "newest first"


def test_the_batch_api_needs_the_api_key_when_one_is_set() -> None:
    with served(api_key=SecretStr("secret")) as (client, _root):
        content = batch_file({"a": chat_body("x")})
        for call in (
            lambda: client.files.create(file=("in.jsonl", content), purpose="batch"),
            lambda: client.files.list(),
            lambda: client.batches.list(),
            lambda: client.batches.retrieve("batch_x"),
        ):
            with pytest.raises(openai.AuthenticationError):
                call()
        client.api_key = "secret"
        assert wait_for(client, submit(client, content).id).status == "completed"


def test_call_records_carry_the_batch_id_of_the_items_that_ran() -> None:
    with served() as (client, root):
        client.chat.completions.create(**chat_body("live one"))
        batch = submit(client, batch_file({"a": chat_body("x"), "b": chat_body("y")}))
        wait_for(client, batch.id)
        calls = httpx.get(f"{root}/_calls").json()

    assert sorted((call["batch_id"] or "", call["first_user_text"]) for call in calls) == [
        ("", "live one"),
        (batch.id, "x"),
        (batch.id, "y"),
    ]
