"""A batch judge's round trip on a real SQLite ledger and the OpenAI-compatible test server's Batch
API over HTTP: calls are queued, not made live; one upload per batch even after a crash between a
send and its record; replies priced at the batch rate; what the batch failed is made live."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from devkit.openai_test_server import TestServerConfig, serve_in_thread
from services.annotator.batches import BatchRoundTrip
from services.annotator.handler import AnnotatorContext, handle_response
from shared.backends.openai_batch import OpenAIBatchClient, file_name
from shared.backends.openai_http import OpenAIHttpBackend
from shared.contracts import events as ev
from tests import factories
from tests.integration.judge_responder import expected_rating, judge_responder
from tests.unit.services.annotator.context import annotator_context

PRICE_IN, PRICE_OUT = 0.5, 2.0  # USD per 1k tokens, live


@dataclasses.dataclass
class BatchJudge:
    ctx: AnnotatorContext
    trip: BatchRoundTrip
    client: OpenAIBatchClient
    sdk: openai.OpenAI
    root_url: str
    published: list[ev.Annotation]

    def calls(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.root_url}/_calls").json()

    def uploaded_call_ids(self) -> list[str]:
        """Every custom id of every batch input file the server holds."""
        ids = []
        for uploaded in self.sdk.files.list(purpose="batch"):
            content = self.sdk.files.content(uploaded.id).text
            ids += [line.split('"custom_id": "')[1].split('"')[0] for line in content.splitlines() if line]
        return ids


@contextmanager
def batch_judge(
    tmp_path: Path, mode: str = "all_in_one", swap: bool = False, **server: Any
) -> Iterator[BatchJudge]:
    with serve_in_thread(
        TestServerConfig(responder=judge_responder, models=["judge-model"], **server)
    ) as running:
        entry = {
            "id": "judge",
            "model": "judge-model",
            "base_url": running.base_url,
            "mode": mode,
            "swap": swap,
            "batch": True,
            "price_per_1k_input": PRICE_IN,
            "price_per_1k_output": PRICE_OUT,
        }
        client = OpenAIBatchClient("judge-model", running.base_url, None)
        live = OpenAIHttpBackend("judge-model", running.base_url, None, max_retries=0)
        ctx = dataclasses.replace(
            annotator_context(tmp_path, entry, models=("a", "b"), batch_max_wait_s=0),
            backend=live,
            batches=client,
        )
        published: list[ev.Annotation] = []
        trip = BatchRoundTrip(ctx, client, owns=lambda _key: True, publish=published.extend)
        sdk = openai.OpenAI(base_url=running.base_url, api_key="x", max_retries=0)
        try:
            yield BatchJudge(ctx, trip, client, sdk, running.root_url, published)
        finally:
            live.close()
            client.close()
            ctx.ledger.close()


def answers(n: int) -> list[ev.Response]:
    inst = factories.instruction(n, models=["a", "b"])
    return [factories.response(inst, model, text=f"answer {model} to {n}") for model in ("a", "b")]


def queue(judge: BatchJudge, *instructions: int) -> None:
    for n in instructions:
        first, second = answers(n)
        assert handle_response(first, judge.ctx) == []  # waits for the second answer
        assert handle_response(second, judge.ctx) == []  # complete: its judge call is queued


def test_calls_wait_for_one_batch_and_its_replies_rate_the_instructions_at_half_price(tmp_path: Path) -> None:
    with batch_judge(tmp_path) as judge:
        queue(judge, 1, 2)
        assert judge.calls() == [], "a batch judge makes no live call"

        judge.trip.step()  # assembles, uploads and creates the batch
        assert judge.published == []
        judge.trip.step()  # the batch is done: replies saved, instructions rated

        assert sorted(a.instruction_id for a in judge.published) == [
            factories.instruction(n).instruction_id for n in (1, 2)
        ]
        for annotation in judge.published:
            for rated in annotation.rated:
                for aspect, rating in rated.ratings.items():
                    assert rating.rating == expected_rating(rated.text, aspect)
        calls = judge.calls()
        assert len(calls) == 2 and all(call["batch_id"] for call in calls)
        assert len(judge.uploaded_call_ids()) == 2
        [spend] = judge.ctx.ledger.judge_spend().values()
        tokens_in = sum(call["prompt_tokens"] for call in calls)
        tokens_out = sum(call["completion_tokens"] for call in calls)
        live_price = (tokens_in * PRICE_IN + tokens_out * PRICE_OUT) / 1000
        assert spend.total_usd == pytest.approx(live_price * 0.5) and spend.batch_usd == spend.total_usd
        assert judge.ctx.ledger.batch_request_counts("judge") == {"done": 2}
        # a redelivered answer is answered from the ledger: nothing queued, nothing paid
        first = next(
            a for a in judge.published if a.instruction_id == factories.instruction(1).instruction_id
        )
        assert handle_response(answers(1)[1], judge.ctx) == [first]
        assert len(judge.calls()) == 2


def test_every_call_of_a_swapped_per_aspect_rating_goes_in_the_same_batch(tmp_path: Path) -> None:
    with batch_judge(tmp_path, mode="per_aspect", swap=True) as judge:
        queue(judge, 1)
        judge.trip.step()
        judge.trip.step()

        [annotation] = judge.published
        assert annotation.self_agreement == 1.0  # the hash judge has no position bias
        assert len(judge.uploaded_call_ids()) == 6, "three aspects, two orders, one upload"


def test_a_crash_after_the_upload_or_the_create_sends_nothing_twice(tmp_path: Path) -> None:
    with batch_judge(tmp_path, batch_completion_s=3600) as judge:
        ledger = judge.ctx.ledger
        queue(judge, 1)
        assert ledger.assemble_batch("judge", "crash-after-upload", 10, datetime.now(UTC)) == 1
        judge.client.upload("crash-after-upload", ledger.batch_lines("crash-after-upload"))  # not recorded
        queue(judge, 2)
        assert ledger.assemble_batch("judge", "crash-after-create", 10, datetime.now(UTC)) == 1
        file_id = judge.client.upload("crash-after-create", ledger.batch_lines("crash-after-create"))
        ledger.set_batch_file("crash-after-create", file_id)
        created = judge.client.create("crash-after-create", file_id)  # not recorded

        judge.trip.step()  # the restarted annotator finds both

        uploaded = [f.filename for f in judge.sdk.files.list(purpose="batch")]
        assert sorted(uploaded) == sorted(map(file_name, ("crash-after-upload", "crash-after-create")))
        assert len(list(judge.sdk.batches.list())) == 2
        batch_ids = {b.id: b.batch_id for b in ledger.open_batches("judge")}
        assert batch_ids["crash-after-create"] == created and batch_ids["crash-after-upload"] is not None
        uploaded_ids = judge.uploaded_call_ids()
        assert len(uploaded_ids) == len(set(uploaded_ids)) == 2


def test_requests_an_expired_batch_did_not_run_are_made_live(tmp_path: Path) -> None:
    with batch_judge(tmp_path, batch_expire=True) as judge:
        queue(judge, 1, 2, 3, 4)
        judge.trip.step()
        judge.trip.step()  # half the batch ran; the other half expired and is rated live

        assert len(judge.published) == 4
        calls = judge.calls()
        assert sum(1 for c in calls if c["batch_id"]) == 2 and sum(1 for c in calls if not c["batch_id"]) == 2
        assert judge.ctx.ledger.batch_request_counts("judge") == {"done": 2, "failed": 2}
        [spend] = judge.ctx.ledger.judge_spend().values()
        assert 0 < spend.batch_usd < spend.total_usd
