"""The ledger calls of coroutine handlers (the sampler's), for use on the service's event loop.

Concurrent calls share one query or one transaction, as ``Ledger``'s calls from threads do, but
the batches run in a thread of their own (one for writes, one for reads), so the loop never waits
on the database and a message costs no thread hand-off of its own.
"""

from __future__ import annotations

from functools import partial

from shared.contracts import events as ev
from shared.ledger import tables as t
from shared.ledger.batcher import AsyncBatcher
from shared.ledger.store import Ledger, Rows, fact_rows


class AsyncLedger:
    def __init__(self, ledger: Ledger) -> None:
        self._writes: AsyncBatcher[Rows, int] = AsyncBatcher(ledger.insert_new, "ledger-writes")
        self._response_reads: AsyncBatcher[str, list[dict]] = AsyncBatcher(
            partial(ledger.select_payloads, t.ResponseRow), "ledger-reads"
        )

    async def record(self, *facts: ev.Event) -> int:
        """``Ledger.record``: returns once the facts are committed; how many were new."""
        return await self._writes.call(fact_rows(facts))

    async def responses_for(self, instruction_id: str) -> list[ev.Response]:
        return [ev.Response.model_validate(p) for p in await self._response_reads.call(instruction_id)]

    def close(self) -> None:
        self._writes.close()
        self._response_reads.close()
