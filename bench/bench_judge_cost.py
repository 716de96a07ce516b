"""Judge dollars per 1,000 instructions: live calls against live calls served by a prefix cache.

The same instructions (4 answers each, one image) are rated through the annotator's real code path
(``services.annotator.handler.rate``, the OpenAI HTTP backend, a SQLite ledger) against the
OpenAI-compatible test server, once without and once with its prefix cache (vLLM's automatic prefix
caching, blocks of 16 tokens). Each call is priced from the usage the server reports, at the judge's
registry prices (defaults: GPT-4o's list prices, USD per 1k tokens). The judge prompt puts its fixed
part (rubric and reply format) first, so every call after the first is served it from the cache.
Batch pricing is not measured: the annotator has no batch mode yet.

Run: ``python -m bench.bench_judge_cost [--instructions 50] [--answers 4]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from bench.bench_judge_tokens import dataset, rate_all
from devkit.openai_test_server import TestServerConfig, serve_in_thread
from shared.blobs.store import BlobStore
from shared.ledger import JudgeSpend
from shared.registry import JudgeEntry
from tests.integration.judge_responder import judge_responder

CACHE_BLOCK_TOKENS = 16


def measure(judge: JudgeEntry, cached: bool, work: Path, data: list) -> JudgeSpend:
    config = TestServerConfig(
        responder=judge_responder, prefix_cache_block_tokens=CACHE_BLOCK_TOKENS if cached else None
    )
    with serve_in_thread(config) as server:
        judge = judge.model_copy(update={"base_url": server.base_url})
        _annotations, spend = rate_all(judge, work / f"{judge.mode}-{cached}.db", work / "blobs", data)
    return spend


def main(
    instructions: int = typer.Option(50, help="Instructions rated each way."),
    answers: int = typer.Option(4, help="Answers per instruction."),
    price_input: float = typer.Option(0.0025, help="USD per 1k prompt tokens."),
    price_cached_input: float = typer.Option(0.00125, help="USD per 1k cached prompt tokens."),
    price_output: float = typer.Option(0.01, help="USD per 1k completion tokens."),
) -> None:
    """Print USD per 1,000 instructions, live and live with prefix caching, and their ratio."""
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
            live = measure(judge, False, work, data)
            for way, spend in (("live", live), ("live + cache", measure(judge, True, work, data))):
                share = spend.cached_prompt_tokens / spend.prompt_tokens
                usd, ratio = spend.total_usd * per_1000, spend.total_usd / live.total_usd
                print(f"{mode:>11} {way:>15} {share:>12.1%} {usd:>11.4f} {ratio:>6.2f}")
    print("batch: not measured (no batch mode yet)")


if __name__ == "__main__":
    typer.run(main)
