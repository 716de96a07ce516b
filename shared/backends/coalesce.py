"""Concurrent ``agenerate`` calls of an in-process backend share one ``generate`` call.

The sampler answers one instruction per lane, so an in-process backend (transformers, vLLM) gets one
instruction's requests per call, and runs its calls one at a time: without this, a batch of one
where the model could take dozens. Here the calls that arrive while a batch runs form the next batch
(``AsyncBatcher``, in a thread of its own) and each caller gets its own results. If a batch fails,
its calls run again one by one, so a prompt over the context or an undecodable image fails only its
own instruction; only those final outcomes count in ``vlf_backend_requests_total``.
"""

from __future__ import annotations

from typing import Protocol

from shared.backends.base import GenerationRequest, GenerationResult
from shared.batching import AsyncBatcher

Call = list[GenerationRequest]  # one caller's requests (an instruction's samples)


class CountedGenerate(Protocol):
    """An in-process backend's ``generate``; ``count_failures=False`` for a batch tried again if it fails."""

    def __call__(
        self, requests: list[GenerationRequest], *, count_failures: bool = True
    ) -> list[GenerationResult]: ...


def coalescing_batcher(generate: CountedGenerate, name: str) -> AsyncBatcher[Call, list[GenerationResult]]:
    """``await batcher.call(requests)`` from the loop's tasks; ``close()`` when the backend closes."""

    def run_calls(calls: list[Call]) -> list[list[GenerationResult]]:
        if len(calls) == 1:  # alone, or again alone after its batch failed: its outcome is final
            return [generate(calls[0])]
        results = iter(generate([request for call in calls for request in call], count_failures=False))
        return [[next(results) for _ in call] for call in calls]

    return AsyncBatcher(run_calls, name)
