"""Batching of concurrent calls: calls that arrive together from many threads (``Batcher``) or
from many tasks of one event loop (``AsyncBatcher``) share one run: one ledger query or transaction,
one batch of an in-process model (``shared.backends.coalesce``).

A service runs up to 64 handler lanes, and each message costs a ledger read and a ledger write. One
transaction per call cost ~0.6-0.8 ms of CPU each (connection checkout, BEGIN, statement, COMMIT),
which made the ledger a third of the sampler's CPU. Here the first caller to find no batch running
leads: it takes every call queued, runs them as one batch, wakes their callers, and hands the lead
to the first caller still waiting. Each caller still returns only after its own work is done (a
write is committed), so the at-least-once contract is unchanged.

``AsyncBatcher`` does the same for coroutines: batches run one at a time in its own thread, so
the loop never waits on the database, and the calls that arrive meanwhile form the next batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
        found = outcomes(self._run_batch, [call.item for call in batch])
        for call, (result, error) in zip(batch, found, strict=True):
            call.result, call.error = result, error


def outcomes(
    run_batch: Callable[[list[In]], list[Out]], items: list[In]
) -> list[tuple[Out | None, BaseException | None]]:
    """(result, None) or (None, error) per item: the whole batch at once, or, if that fails, one item
    at a time, so each caller gets its own item's error."""
    if len(items) > 1:
        try:
            return [(result, None) for result in run_batch(items)]
        except BaseException:  # retried one by one below, where each item gets its own error
            pass
    found: list[tuple[Out | None, BaseException | None]] = []
    for item in items:
        try:
            found.append((run_batch([item])[0], None))
        except BaseException as exc:  # re-raised in the caller: none returns without a result
            found.append((None, exc))
    return found


class AsyncBatcher(Generic[In, Out]):
    """``await call(item)`` from tasks of one event loop; ``run_batch(items) -> results`` runs in
    this batcher's thread, one batch at a time, with every call that queued up meanwhile and
    during the ``linger_s`` it waits before each batch (like a Kafka producer's ``linger.ms``)."""

    def __init__(self, run_batch: Callable[[list[In]], list[Out]], name: str, linger_s: float = 0.0) -> None:
        self._run_batch = run_batch
        self._linger_s = linger_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._runner: asyncio.Task | None = None

    async def call(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run_queued())
        return await future

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    async def _run_queued(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            batch, self._queue = self._queue, []
            try:
                found = await loop.run_in_executor(
                    self._thread, outcomes, self._run_batch, [item for item, _ in batch]
                )
            except Exception as exc:  # e.g. the thread was shut down: every caller hears of it
                found = [(None, exc)] * len(batch)
            for (_, future), (result, error) in zip(batch, found, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)  # type: ignore[arg-type]  # set whenever error is None
