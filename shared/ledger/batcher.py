"""Batching of concurrent ledger calls: calls that arrive together from many threads share one
query or one transaction.

A service runs up to 64 handler lanes, and each message costs a ledger read and a ledger write. One
transaction per call cost ~0.6-0.8 ms of CPU each (connection checkout, BEGIN, statement, COMMIT),
which made the ledger a third of the sampler's CPU. Here the first caller to find no batch running
leads: it takes every call queued, runs them as one batch, wakes their callers, and hands the lead
to the first caller still waiting. Each caller still returns only after its own work is done (a
write is committed), so the at-least-once contract is unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Call(Generic[In, Out]):
    item: In
    woken: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: Out | None = None
    error: BaseException | None = None


class Batcher(Generic[In, Out]):
    """``call(item)`` from any thread; ``run_batch(items) -> results`` (same order) runs the calls
    that queued up together. If a batch fails, its calls run one by one, so a bad item fails only
    its own caller."""

    def __init__(self, run_batch: Callable[[list[In]], list[Out]]) -> None:
        self._run_batch = run_batch
        self._lock = threading.Lock()
        self._queue: list[_Call[In, Out]] = []
        self._running = False

    def call(self, item: In) -> Out:
        call: _Call[In, Out] = _Call(item)
        with self._lock:
            self._queue.append(call)
            lead = not self._running
            self._running = True
        if not lead:
            call.woken.wait()  # run by a leader, or handed the lead
        if not call.done:
            self._lead()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # set whenever error is None

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._run(batch)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].woken.set()  # not done: it wakes up as the next leader
                else:
                    self._running = False
            for call in batch:
                call.done = True
                call.woken.set()

    def _run(self, batch: list[_Call[In, Out]]) -> None:
        if len(batch) > 1:
            try:
                results = self._run_batch([call.item for call in batch])
            except BaseException:  # retried one by one below, where each caller gets its own error
                pass
            else:
                for call, result in zip(batch, results, strict=True):
                    call.result = result
                return
        for call in batch:
            try:
                call.result = self._run_batch([call.item])[0]
            except BaseException as exc:  # re-raised in the caller's thread: none returns without a result
                call.error = exc
