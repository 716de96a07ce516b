"""Concurrent calls of an in-process backend share one model call.

A service answers one instruction per lane, so an in-process backend (transformers, vLLM) gets one
instruction's requests per call, and runs its calls one at a time: without this, a batch of one
where the model could take dozens. Here the calls that arrive while a batch runs form the next batch
and each caller gets its own results: ``AsyncBatcher`` for the sampler's coroutine lanes, ``Batcher``
for the annotator's thread lanes. If a batch fails, its calls run again one by one, so a prompt over
the context or an undecodable image fails only its own instruction; only those final outcomes count
in ``vlf_backend_requests_total``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

from shared.backends.base import GenerationRequest, GenerationResult
from shared.batching import AsyncBatcher, Batcher

Call = list[GenerationRequest]  # one caller's requests (an instruction's samples)


class CountedGenerate(Protocol):
    """An in-process backend's ``generate``; ``count_failures=False`` for a batch tried again if it fails."""

    def __call__(
        self, requests: list[GenerationRequest], *, count_failures: bool = True
    ) -> list[GenerationResult]: ...


def run_calls_with(generate: CountedGenerate) -> Callable[[list[Call]], list[list[GenerationResult]]]:
    """The batch function of both batchers: every call's requests in one ``generate``, split back."""

    def run_calls(calls: list[Call]) -> list[list[GenerationResult]]:
        if len(calls) == 1:  # alone, or again alone after its batch failed: its outcome is final
            return [generate(calls[0])]
        results = iter(generate([request for call in calls for request in call], count_failures=False))
        return [[next(results) for _ in call] for call in calls]

    return run_calls


class CoalescedCalls:
    """``generate`` from any thread and ``agenerate`` from the loop's tasks, each batched with the
    calls made meanwhile; the model runs one batch at a time (the backend's own lock)."""

    def __init__(self, generate: CountedGenerate, name: str) -> None:
        run_calls = run_calls_with(generate)
        self._from_threads: Batcher[Call, list[GenerationResult]] = Batcher(run_calls)
        self._from_tasks: AsyncBatcher[Call, list[GenerationResult]] = AsyncBatcher(run_calls, name)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return self._from_threads.call(requests)

    async def agenerate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return await self._from_tasks.call(requests)

    def close(self) -> None:
        self._from_tasks.close()


class CoalescingBackend(ABC):
    """Base of the in-process backends: ``generate`` and ``agenerate`` batched with the calls made
    meanwhile. A subclass calls ``__init__`` with a thread name once ready to generate, implements
    ``_generate`` and closes ``_calls`` when it closes."""

    def __init__(self, name: str) -> None:
        self._calls = CoalescedCalls(self._generate, name)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Results in request order; batched with the calls other threads make meanwhile."""
        return self._calls.generate(requests)

    async def agenerate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Batched with the calls made meanwhile, in a thread: generation never holds the event loop."""
        return await self._calls.agenerate(requests)

    @abstractmethod
    def _generate(
        self, requests: list[GenerationRequest], *, count_failures: bool = True
    ) -> list[GenerationResult]:
        """One model batch; ``count_failures=False`` when a failure will be retried call by call."""
