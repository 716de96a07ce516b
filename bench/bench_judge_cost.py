"""Judge dollars per 1,000 instructions: live, live served by a prefix cache, and the Batch API.

The same instructions (4 answers each, one image) are rated through the annotator's real code path
(``services.annotator.handler.rate``, the OpenAI HTTP backend or the Batch API client and
``services.annotator.batches``, a SQLite ledger) against the OpenAI-compatible test server, with
and without its prefix cache (vLLM's automatic prefix caching, blocks of 16 tokens). Each call is
priced from the usage the server reports, at the judge's registry prices (defaults: GPT-4o's list
prices, USD per 1k tokens; batch at half of them, OpenAI's rate). The judge prompt puts its fixed
part (rubric and reply format) first, so every call after the first is served it from the cache.

Run: ``python -m bench.bench_judge_cost [--instructions 50] [--answers 4]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from prometheus_client import CollectorRegistry

from bench.bench_judge_tokens import dataset, rate_all
from devkit.openai_test_server import TestServerConfig, serve_in_thread
from services.annotator.batches import BatchRoundTrip
from services.annotator.errors import ReplyPending
from services.annotator.handler import AnnotatorContext, rate
from services.annotator.metrics import JudgeMetrics
from services.annotator.settings import AnnotatorSettings
from shared.backends.build import build_batch_client
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import JudgeSpend, Ledger
from shared.registry import JudgeEntry, Registry
from tests.integration.judge_responder import judge_responder

CACHE_BLOCK_TOKENS = 16


def measure(judge: JudgeEntry, cached: bool, batch: bool, work: Path, data: list) -> JudgeSpend:
    config = TestServerConfig(
        responder=judge_responder, prefix_cache_block_tokens=CACHE_BLOCK_TOKENS if cached else None
    )
    with serve_in_thread(config) as server:
        judge = judge.model_copy(update={"base_url": server.base_url, "batch": batch})
        db = work / f"{judge.mode}-{cached}-{batch}.db"
        if batch:
            return rate_in_one_batch(judge, db, work / "blobs", data)
        _annotations, spend = rate_all(judge, db, work / "blobs", data)
    return spend


def rate_in_one_batch(judge: JudgeEntry, db: Path, blobs: Path, data: list) -> JudgeSpend:
    """Queue every instruction's calls, then send them as one batch and rate from its results."""
    ledger = Ledger(f"sqlite:///{db}")
    ledger.migrate()
    client = build_batch_client(judge)
    ctx = AnnotatorContext(
        judge=judge,
        registry=Registry(judges=[judge]),
        backend=None,
        ledger=ledger,
        blobs=BlobStore(str(blobs)),
        settings=AnnotatorSettings(judge_id=judge.id, batch_max_requests=100_000, batch_max_wait_s=0),
        metrics=JudgeMetrics(CollectorRegistry()),
        batches=client,
    )
    rated: list[ev.Annotation] = []
    trip = BatchRoundTrip(ctx, client, owns=lambda _key: True, publish=rated.extend)
    try:
        for inst, responses in data:
            ledger.record(inst, *responses)  # as the handler does before it rates
            try:
                rate(inst, responses, ctx)
            except ReplyPending:  # its calls are queued for the batch
                continue
            raise AssertionError(f"{inst.instruction_id} was rated before its batch was sent")
        while len(rated) < len(data):
            trip.step()
        return ledger.judge_spend()[judge.id]
    finally:
        client.close()
        ledger.close()


def main(
    instructions: int = typer.Option(50, help="Instructions rated each way."),
    answers: int = typer.Option(4, help="Answers per instruction."),
    price_input: float = typer.Option(0.0025, help="USD per 1k prompt tokens."),
    price_cached_input: float = typer.Option(0.00125, help="USD per 1k cached prompt tokens."),
    price_output: float = typer.Option(0.01, help="USD per 1k completion tokens."),
) -> None:
    """Print USD per 1,000 instructions, live, batch, each with and without prefix caching, and the
    ratio of each to live."""
    per_1000 = 1000 / instructions
    print(
        f"{instructions} instructions x {answers} answers, test-server token rule; prices per 1k tokens: "
        f"input ${price_input}, cached input ${price_cached_input}, output ${price_output}"
    )
    print(f"{'mode':>11} {'way':>15} {'cached share':>12} {'USD/1k inst':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = dataset(instructions, answers, BlobStore(str(work / "blobs")))
        for mode in ("all_in_one", "per_aspect"):
            judge = JudgeEntry(
                id=f"judge-{mode.replace('_', '-')}",
                model="test-model",
                base_url="http://unused/v1",
                mode=mode,
                price_per_1k_input=price_input,
                price_per_1k_cached_input=price_cached_input,
                price_per_1k_output=price_output,
            )
            live = measure(judge, False, False, work, data)
            ways = (
                ("live", live),
                ("live + cache", measure(judge, True, False, work, data)),
                ("batch", measure(judge, False, True, work, data)),
                ("batch + cache", measure(judge, True, True, work, data)),
            )
            for way, spend in ways:
                share = spend.cached_prompt_tokens / spend.prompt_tokens
                usd, ratio = spend.total_usd * per_1000, spend.total_usd / live.total_usd
                print(f"{mode:>11} {way:>15} {share:>12.1%} {usd:>11.4f} {ratio:>6.2f}")


if __name__ == "__main__":
    typer.run(main)
