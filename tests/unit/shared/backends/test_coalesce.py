"""Concurrent calls of an in-process backend share one generate call; a failed batch fails only
the caller whose request broke it, and only final outcomes are counted as failures."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.backends.base import ChatMessage, GenerationRequest, GenerationResult
from shared.backends.coalesce import CoalescedCalls
from shared.backends.errors import ContextLengthError


def ask(text: str) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage(role="user", text=text)])


class RecordingGenerate:
    """Answers each request with its own text; refuses any batch that holds a request saying "too long"."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bool]] = []

    def __call__(
        self, requests: list[GenerationRequest], *, count_failures: bool = True
    ) -> list[GenerationResult]:
        texts = [request.messages[0].text for request in requests]
        self.calls.append((texts, count_failures))
        if "too long" in texts:
            raise ContextLengthError("over the context")
        return [
            GenerationResult(
                text=t.upper(), finish_reason="stop", prompt_tokens=1, completion_tokens=1, latency_s=0
            )
            for t in texts
        ]


async def call_all(generate: RecordingGenerate, calls: list[list[GenerationRequest]]) -> list:
    coalesced = CoalescedCalls(generate, "test-batches")
    try:
        return await asyncio.gather(*(coalesced.agenerate(call) for call in calls), return_exceptions=True)
    finally:
        coalesced.close()


def test_calls_made_together_share_one_generate_and_each_gets_its_own_results():
    generate = RecordingGenerate()
    calls = [[ask("a")], [ask("b"), ask("c")], [ask("d")]]

    results = asyncio.run(call_all(generate, calls))

    assert [[r.text for r in result] for result in results] == [["A"], ["B", "C"], ["D"]]
    assert generate.calls == [(["a", "b", "c", "d"], False)]


def test_a_failed_batch_runs_each_call_alone_and_counts_only_final_failures():
    generate = RecordingGenerate()
    calls = [[ask("a")], [ask("too long")], [ask("c")]]

    results = asyncio.run(call_all(generate, calls))

    assert [r[0].text for r in (results[0], results[2])] == ["A", "C"]
    assert isinstance(results[1], ContextLengthError)
    assert generate.calls == [
        (["a", "too long", "c"], False),  # the batch: not counted if it fails
        (["a"], True),
        (["too long"], True),  # counted once, as its caller's final outcome
        (["c"], True),
    ]


def test_a_lone_call_is_final_at_once():
    generate = RecordingGenerate()

    [result] = asyncio.run(call_all(generate, [[ask("too long")]]))

    assert isinstance(result, ContextLengthError)
    assert generate.calls == [(["too long"], True)]


@pytest.mark.parametrize("count", [1, 7])
def test_every_caller_is_answered_whatever_the_batch_size(count):
    generate = RecordingGenerate()

    results = asyncio.run(call_all(generate, [[ask(str(i))] for i in range(count)]))

    assert [result[0].text for result in results] == [str(i) for i in range(count)]


def test_calls_from_threads_are_batched_too_and_a_bad_one_fails_alone():
    """The annotator's lanes are threads: each still gets its own answer or its own error."""
    generate = RecordingGenerate()
    coalesced = CoalescedCalls(generate, "test-batches")
    texts = ["a", "b", "too long", "d", "e", "f"]

    def ask_alone(text: str) -> str | Exception:
        try:
            return coalesced.generate([ask(text)])[0].text
        except ContextLengthError as error:
            return error

    with ThreadPoolExecutor(len(texts)) as threads:
        answers = list(threads.map(ask_alone, texts))
    coalesced.close()

    assert [a for i, a in enumerate(answers) if i != 2] == ["A", "B", "D", "E", "F"]
    assert isinstance(answers[2], ContextLengthError)
    assert sorted(text for texts, _ in generate.calls for text in texts if text != "too long") >= list(
        "abdef"
    )
    assert [counted for texts, counted in generate.calls if "too long" in texts].count(True) == 1
