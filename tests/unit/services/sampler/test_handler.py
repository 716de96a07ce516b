import asyncio

import pytest

from services.sampler.handler import (
    SamplerContext,
    build_requests,
    handle_instruction,
    image_urls,
    response_status,
    sample_seed,
)
from shared.backends.base import GenerationRequest, GenerationResult
from shared.blobs.errors import BlobNotFound
from shared.blobs.images import ImagePolicy
from shared.blobs.store import BlobStore, blob_uri
from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.ledger.async_ledger import AsyncLedger
from shared.registry import ModelEntry, Registry

MODEL = ModelEntry(id="m1", backend="openai", model="x", base_url="http://h/v1")


def test_seeds_differ_per_sample_and_work_for_any_instruction_id():
    assert sample_seed(MODEL, "caller-given id, not hex", 0) != sample_seed(
        MODEL, "caller-given id, not hex", 1
    )
    assert sample_seed(MODEL, "abc", 0) == sample_seed(MODEL, "abc", 0)


def test_one_request_per_sample_with_the_prompt_and_images():
    inst = ev.Instruction(instruction_id="inst-00000001", prompt="What is it?", samples_per_model=3)
    requests = build_requests(inst, MODEL, [0, 1, 2], [b"png-bytes"], [])
    assert len(requests) == 3
    assert {r.params.seed for r in requests} == {sample_seed(MODEL, inst.instruction_id, i) for i in range(3)}
    assert all(r.messages[-1].text == "What is it?" and r.images == [b"png-bytes"] for r in requests)


def test_empty_and_refused_answers_are_recorded_as_such():
    assert response_status(GenerationResult(text="  ", finish_reason="stop")) == "empty"
    assert response_status(GenerationResult(text="no", finish_reason="content_filter")) == "refused"
    assert response_status(GenerationResult(text="A cat.", finish_reason="stop")) == "answered"


def test_with_an_image_url_base_images_go_as_urls_and_a_missing_one_is_refused(tmp_path):
    blobs = BlobStore(str(tmp_path))
    uri = blobs.put(b"png bytes", suffix=".png")
    hex_digest = uri.removeprefix("sha256:").removesuffix(".png")

    assert image_urls([uri], blobs, "http://blobs:8080") == [
        f"http://blobs:8080/sha256/{hex_digest[:2]}/{hex_digest}.png"
    ]
    with pytest.raises(BlobNotFound):
        image_urls([uri, blob_uri(b"never stored")], blobs, "http://blobs:8080")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"backend": "transformers", "image_url_base": "http://blobs"}, "takes image bytes"),
        ({"backend": "openai", "image_url_base": "s3://bucket/blobs"}, "must be an http"),
    ],
)
def test_image_url_base_needs_an_http_url_and_a_backend_that_fetches(fields, error):
    with pytest.raises(ValueError, match=error):
        ModelEntry(id="m1", model="x", base_url="http://h/v1", **fields)


class CountingBackend:
    """Answers every request with the call's number, so a test sees which call wrote an answer."""

    def __init__(self) -> None:
        self.calls: list[list[int | None]] = []

    async def agenerate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.calls.append([r.params.seed for r in requests])
        return [GenerationResult(text=f"call {len(self.calls)}", finish_reason="stop") for _ in requests]


def test_an_instruction_sent_again_with_more_samples_asks_only_for_the_new_ones(tmp_path):
    """Sample 0 used to be generated again: paid twice, and published with a text the ledger (which
    keeps the first row of an id) does not hold."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    backend = CountingBackend()
    blobs = BlobStore(str(tmp_path))
    ctx = SamplerContext(MODEL, Registry(models=[MODEL]), backend, AsyncLedger(ledger), blobs, ImagePolicy())
    once = ev.Instruction(instruction_id="inst-00000001", prompt="What is it?", models=["m1"])
    twice = once.model_copy(update={"samples_per_model": 2})

    async def answers(event: ev.Instruction) -> list[ev.Response]:
        return await handle_instruction(event, ctx)

    first, second, again = (asyncio.run(answers(e)) for e in (once, twice, twice))

    seeds = [sample_seed(MODEL, once.instruction_id, i) for i in (0, 1)]
    assert backend.calls == [[seeds[0]], [seeds[1]]]
    assert [(r.sample_index, r.text) for r in second] == [(0, "call 1"), (1, "call 2")]
    assert second[0] == first[0] and again == second
    assert sorted((r.sample_index, r.text) for r in ledger.responses_for(once.instruction_id)) == [
        (0, "call 1"),
        (1, "call 2"),
    ]
