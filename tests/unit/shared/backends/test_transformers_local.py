"""The in-process backend answers real tokens from the tiny models, batched, with images."""

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from devkit.tinymodels import FAMILIES, build_tiny_vlm
from shared.backends.base import ChatMessage, GenerationRequest
from shared.backends.errors import ContextLengthError, PermanentBackendError
from shared.backends.transformers_local import (
    TransformersBackend,
    batches_by_params,
    chat_messages,
    completion_length,
)
from shared.contracts.events import SamplingParams

pytestmark = pytest.mark.slow


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def ask(text: str, images: list[bytes], **params) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", text=text)], images=images, params=SamplingParams(**params)
    )


@pytest.fixture(scope="module", params=FAMILIES)
def model_path(request, tmp_path_factory):
    return build_tiny_vlm(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def backend(model_path):
    served = TransformersBackend(str(model_path), device="cpu", max_batch_size=4)
    yield served
    served.close()


def test_batched_generation_with_images_returns_real_tokens_in_order(backend):
    requests = [
        ask(f"What colour is shape {i}?", [png(c)], max_tokens=6) for i, c in enumerate(["red", "blue"] * 3)
    ]

    results = backend.generate(requests)
    one_by_one = [backend.generate([request])[0] for request in requests]

    assert len(results) == 6
    for result, single in zip(results, one_by_one, strict=True):
        assert result.completion_tokens >= 1
        assert result.finish_reason in {"stop", "length"}
        assert result.finish_reason == "stop" or result.completion_tokens == 6
        assert result.prompt_tokens > 5
        assert result.text == single.text  # greedy: batching and left padding change nothing
        assert result.latency_s > 0


def test_requests_without_images_and_with_a_system_message(backend):
    request = GenerationRequest(
        messages=[ChatMessage(role="system", text="Be brief."), ChatMessage(role="user", text="Say yes.")],
        params=SamplingParams(max_tokens=4),
    )

    (result,) = backend.generate([request])

    assert result.completion_tokens >= 1


def test_sampling_with_a_seed_is_reproducible_and_differs_across_seeds(backend):
    def sample(seed: int) -> str:
        request = ask("Describe the image.", [png("green")], temperature=1.5, max_tokens=12, seed=seed)
        return backend.generate([request])[0].text

    assert sample(1) == sample(1)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_seeded_samples_are_the_same_when_asked_from_many_coroutines_at_once(backend):
    """The sampler awaits ``agenerate`` from many lanes at once; each seeded answer must still be
    the one a lone call gives (concurrent calls must not share the RNG a seeded batch forks)."""
    requests = [
        ask("Describe the image.", [png("green")], temperature=1.5, max_tokens=12, seed=s) for s in range(6)
    ]
    alone = [backend.generate([request])[0].text for request in requests]

    async def all_at_once() -> list[str]:
        results = await asyncio.gather(*(backend.agenerate([request]) for request in requests))
        return [result[0].text for result in results]

    assert asyncio.run(all_at_once()) == alone


def test_concurrent_calls_share_batches_and_a_bad_one_fails_alone(model_path, monkeypatch):
    """The sampler's lanes (tasks) and the annotator's (threads) each ask for one instruction: greedy
    ones go to the model together and each caller gets the answer a lone call gives; a prompt over
    the context fails only its own caller (its batch-mates run again alone) and counts once."""
    registry = CollectorRegistry()
    batched = TransformersBackend(str(model_path), device="cpu", max_batch_size=4, registry=registry)
    requests = [
        ask(f"What colour is shape {i}?", [png(c)], max_tokens=5, seed=i)
        for i, c in enumerate(["red", "green", "blue", "cyan", "magenta", "yellow"])
    ]
    too_long = ask("red " * (batched.max_positions + 10), [png("red")], max_tokens=5)

    def all_at_once(asked: list[GenerationRequest]) -> list:
        async def gathered() -> list:
            return await asyncio.gather(*(batched.agenerate([r]) for r in asked), return_exceptions=True)

        return asyncio.run(gathered())

    try:
        alone = [batched.generate([request])[0].text for request in requests]
        batch_sizes: list[int] = []
        model_generate = batched.model.generate

        def counted_generate(**inputs):
            batch_sizes.append(inputs["input_ids"].shape[0])
            return model_generate(**inputs)

        monkeypatch.setattr(batched.model, "generate", counted_generate)
        together = all_at_once(requests)
        from_tasks = list(batch_sizes)
        with ThreadPoolExecutor(len(requests)) as threads:  # the annotator's lanes are threads
            from_threads = list(threads.map(lambda request: batched.generate([request])[0].text, requests))
        threads_batch_sizes = batch_sizes[len(from_tasks) :]
        with_a_bad_one = all_at_once([requests[0], too_long, requests[1]])
    finally:
        batched.close()

    assert [result[0].text for result in together] == alone
    assert from_tasks == [4, 2]  # max_batch_size 4: six calls in two model batches
    assert from_threads == alone and max(threads_batch_sizes) > 1
    assert isinstance(with_a_bad_one[1], ContextLengthError)
    assert [with_a_bad_one[0][0].text, with_a_bad_one[2][0].text] == alone[:2]
    ok = registry.get_sample_value("vlf_backend_requests_total", {"model": str(model_path), "outcome": "ok"})
    refused = {"model": str(model_path), "outcome": "context_length"}
    assert ok == 6 + 6 + 6 + 2 and registry.get_sample_value("vlf_backend_requests_total", refused) == 1


def test_a_prompt_longer_than_the_context_is_refused_before_any_generation(backend):
    too_long = ask("red " * (backend.max_positions + 10), [png("red")])

    with pytest.raises(ContextLengthError, match="request 1"):
        backend.generate([ask("Is it red?", [png("red")]), too_long])


def test_a_chat_template_override_replaces_the_models_own(backend, model_path):
    """The override is what the model reads: a template that adds words adds prompt tokens."""
    own = backend.processor.chat_template
    overriding = TransformersBackend(
        str(model_path), device="cpu", chat_template="Answer in one word. " + own
    )
    request = ask("What colour?", [png("red")], max_tokens=2)
    try:
        [plain] = backend.generate([request])
        [overridden] = overriding.generate([request])
    finally:
        overriding.close()

    assert overridden.prompt_tokens > plain.prompt_tokens


def test_metrics_count_requests_tokens_and_refusals_per_model(model_path):
    registry = CollectorRegistry()
    counted = TransformersBackend(str(model_path), device="cpu", registry=registry)
    try:
        results = counted.generate([ask("What colour?", [png("red")], max_tokens=3)] * 2)
        with pytest.raises(ContextLengthError):
            counted.generate([ask("word " * (counted.max_positions + 10), [], max_tokens=3)])
    finally:
        counted.close()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"model": str(model_path), **labels})

    assert value("vlf_backend_requests_total", outcome="ok") == 2
    assert value("vlf_backend_requests_total", outcome="context_length") == 1
    assert value("vlf_backend_tokens_total", direction="in") == sum(r.prompt_tokens for r in results)
    assert value("vlf_backend_tokens_total", direction="out") == sum(r.completion_tokens for r in results)
    assert value("vlf_backend_latency_seconds_count") == 2
    assert value("vlf_backend_in_flight") == 0


def test_unseeded_samples_differ_and_seeded_ones_repeat(backend):
    """Unseeded sampling used to run on a fork of the RNG that was restored after it: every
    unseeded call gave the same answer."""
    unseeded = [
        backend.generate([ask("Describe it.", [], temperature=1.0, max_tokens=12)])[0] for _ in range(2)
    ]
    seeded = [
        backend.generate([ask("Describe it.", [], temperature=1.0, max_tokens=12, seed=3)])[0]
        for _ in range(2)
    ]

    assert unseeded[0].text != unseeded[1].text
    assert seeded[0].text == seeded[1].text


def test_an_undecodable_image_is_a_permanent_error(backend):
    with pytest.raises(PermanentBackendError):
        backend.generate([ask("What is it?", [b"not an image"])])


def test_a_prompt_holding_the_models_image_placeholder_is_a_permanent_error(backend):
    """The processor's ValueError (two placeholders, one image) used to stop the service, then again
    on every redelivery; as a permanent error the instruction goes to the DLQ with the reason."""
    placeholder = backend.processor.image_token  # "<image>" for LLaVA, "<|image_pad|>" for Qwen2-VL
    with pytest.raises(PermanentBackendError, match="processor refused the request"):
        backend.generate([ask(f"{placeholder}\nWhat is it?", [png("red")])])


def test_batches_split_on_params_and_size():
    greedy, sampled = SamplingParams(), SamplingParams(temperature=0.7)
    requests = [GenerationRequest(messages=[], params=p) for p in [greedy] * 3 + [sampled] * 2 + [greedy]]

    batches = batches_by_params(requests, max_batch_size=2)

    assert [[index for index, _ in batch] for batch in batches] == [[0, 1], [2], [3, 4], [5]]


def test_greedy_requests_batch_whatever_their_seeds_and_seeded_samples_run_alone():
    """A seed does not change a greedy answer; a seeded sample depends on its batch-mates."""
    greedy = [SamplingParams(seed=seed) for seed in (1, 2, 3)]
    seeded = [SamplingParams(temperature=0.7, seed=5)] * 2
    requests = [GenerationRequest(messages=[], params=p) for p in greedy + seeded]

    batches = batches_by_params(requests, max_batch_size=8)

    assert [[index for index, _ in batch] for batch in batches] == [[0, 1, 2], [3], [4]]


def test_completion_length_stops_at_the_first_eos():
    assert completion_length([5, 6, 2, 0, 0], {2}) == (3, True)
    assert completion_length([5, 6, 7], {2}) == (3, False)


def test_images_go_in_the_first_user_message():
    request = GenerationRequest(
        messages=[
            ChatMessage(role="system", text="s"),
            ChatMessage(role="user", text="a"),
            ChatMessage(role="user", text="b"),
        ],
        images=[b"x", b"y"],
    )

    messages = chat_messages(request)

    assert [part["type"] for part in messages[1]["content"]] == ["image", "image", "text"]
    assert [part["type"] for part in messages[2]["content"]] == ["text"]
