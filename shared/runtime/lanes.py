"""Worker lanes: any idle lane takes the next message, but one key's messages run one at a time, in
arrival order.

Lanes share one queue, so no lane sits idle while another holds a backlog (a fixed lane per key
hash does that when keys are many and distinct, one per instruction); a message whose key is
already running waits behind it, and the lane that finishes a key's message takes that key's
next one.

``LanePool`` runs plain handlers on threads; ``AsyncLanePool`` runs coroutine handlers as tasks on
the service's event loop, where a message costs no thread hand-offs to the loop and back (the
sampler's HTTP calls and ledger writes already run there).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from shared.runtime.event_loop import LoopThread

Record = Any  # kafka-python ConsumerRecord: only ``key`` is read here


class _KeyOrder:
    """Which message may run now: one per key at a time, the others wait in arrival order.
    Thread-safe; ``unfinished`` counts messages admitted and not yet done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[bytes, deque[Record]] = {}  # running key -> its messages that wait
        self.unfinished = 0

    def admit(self, record: Record) -> bool:
        """Whether ``record`` may run now (else it runs after its key's running message)."""
        key = record.key or b""
        with self._lock:
            self.unfinished += 1
            if key in self._waiting:
                self._waiting[key].append(record)
                return False
            self._waiting[key] = deque()
            return True

    def done(self, record: Record) -> Record | None:
        """``record`` finished: its key's next message, which the same lane runs, if any."""
        key = record.key or b""
        with self._lock:
            self.unfinished -= 1
            waiting = self._waiting[key]
            if waiting:
                return waiting.popleft()
            del self._waiting[key]
            return None


class LanePool:
    def __init__(self, name: str, size: int, abandoned: threading.Event) -> None:
        self._process: Callable[[Record], None] = lambda record: None
        self._abandoned = abandoned
        self._order = _KeyOrder()
        self._ready: queue.Queue[Record | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-lane-{i}", daemon=True) for i in range(size)
        ]

    def start(self, process: Callable[[Record], None]) -> None:
        """Lanes run ``process(record)`` on each message given to ``put``."""
        self._process = process
        for thread in self._threads:
            thread.start()

    def put(self, record: Record) -> None:
        if self._order.admit(record):
            self._ready.put(record)

    def idle(self) -> bool:
        """No message queued, waiting or running."""
        return self._order.unfinished == 0

    def stop(self) -> None:
        """Lanes finish every message they were given, then exit (unless abandoned first)."""
        for _ in self._threads:
            self._ready.put(None)

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            record = self._ready.get()
            if record is None:
                return
            while record is not None:
                if self._abandoned.is_set():
                    return  # left uncommitted: redelivered after the restart
                try:
                    self._process(record)
                finally:
                    record = self._order.done(record)


class AsyncLanePool:
    """``LanePool`` for coroutine handlers: ``size`` tasks on the service's event loop; ``put``,
    ``idle``, ``stop`` and ``join`` are called from the poll thread."""

    def __init__(self, size: int, abandoned: threading.Event, loop: LoopThread) -> None:
        self._process: Callable[[Record], Awaitable[None]] | None = None
        self._size = size
        self._abandoned = abandoned
        self._loop = loop
        self._order = _KeyOrder()
        self._ready: asyncio.Queue[Record | None] | None = None  # created on the loop
        self._tasks: list[asyncio.Task] = []

    def start(self, process: Callable[[Record], Awaitable[None]]) -> None:
        """Lanes await ``process(record)`` for each message given to ``put``."""
        self._process = process
        self._loop.run(self._start())

    def put(self, record: Record) -> None:
        if self._order.admit(record):
            self._loop.call_soon(self._enqueue, record)

    def idle(self) -> bool:
        """No message queued, waiting or running."""
        return self._order.unfinished == 0

    def stop(self) -> None:
        """Lanes finish every message they were given, then exit (unless abandoned first)."""
        for _ in range(self._size):
            self._loop.call_soon(self._enqueue, None)

    def join(self, timeout_s: float) -> None:
        if self._tasks:
            self._loop.run(asyncio.wait(self._tasks, timeout=timeout_s))

    async def _start(self) -> None:
        self._ready = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self._size)]

    def _enqueue(self, record: Record | None) -> None:
        assert self._ready is not None
        self._ready.put_nowait(record)

    async def _run(self) -> None:
        assert self._ready is not None and self._process is not None
        while True:
            record = await self._ready.get()
            if record is None:
                return
            while record is not None:
                if self._abandoned.is_set():
                    return  # left uncommitted: redelivered after the restart
                try:
                    await self._process(record)
                finally:
                    record = self._order.done(record)
