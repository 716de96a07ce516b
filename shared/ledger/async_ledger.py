"""The ledger calls of coroutine handlers (the sampler's), for use on the service's event loop.

Concurrent calls share one query or one transaction, as ``Ledger``'s calls from threads do, but
the batches run in a thread of their own (one for writes, one for reads), so the loop never waits
on the database and a message costs no thread hand-off of its own.
"""

from __future__ import annotations

from functools import partial

from shared.batching import AsyncBatcher
from shared.contracts import events as ev
from shared.ledger import tables as t
from shared.ledger.store import Ledger, Rows, fact_rows

# How long a batch waits for more calls before it runs. A lone INSERT and commit costs ~0.7 ms of CPU,
# one row in a batch of 16 ~0.17 ms; at the sampler's ~300 answers/s batches formed by chance
# held 2-3 calls, and the ledger threads took a sixth of the process (bench_sampler at 64 calls).
# The wait costs no throughput: a handler awaits the ledger outside its model call (and runs twice
# as many lanes as the model has slots), so the model's slots stay busy meanwhile.
LINGER_S = 0.02


class AsyncLedger:
    def __init__(self, ledger: Ledger, linger_s: float = LINGER_S) -> None:
        self._writes: AsyncBatcher[Rows, int] = AsyncBatcher(ledger.insert_new, "ledger-writes", linger_s)
        self._response_reads: AsyncBatcher[str, list[dict]] = AsyncBatcher(
            partial(ledger.select_payloads, t.ResponseRow), "ledger-reads", linger_s
        )

    async def record(self, *facts: ev.Event) -> int:
        """``Ledger.record``: returns once the facts are committed; how many were new."""
        return await self._writes.call(fact_rows(facts))

    async def responses_for(self, instruction_id: str) -> list[ev.Response]:
        return [ev.Response.model_validate(p) for p in await self._response_reads.call(instruction_id)]

    def close(self) -> None:
        self._writes.close()
        self._response_reads.close()
