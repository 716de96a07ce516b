"""A batch judge's round trip through the provider's Batch API: queue -> batch -> upload -> results.

The handler queues each judge call with no reply yet in the ledger (see ``handler``). One replica
per judge works the queue: the one that holds the responses partition of the key
``batches:<judge>``, so two replicas never send the same requests. Each step is recorded before the
next one starts, and each step first looks for what a crashed run of it left:

1. assemble: the oldest queued requests, at most ``batch_max_requests``, once that many wait or the
   oldest waited ``batch_max_wait_s``, get a new batch key in one transaction;
2. upload: the key's requests as the file ``vlf-batch-<key>.jsonl``, unless the provider already has
   a file of that name (a crash after the upload); the file id is recorded;
3. create: the batch, with the key in its metadata, unless the provider already has one (a crash
   after the create); its id is recorded and the request bodies are dropped from the ledger;
4. collect, once the batch is done (completed, expired, failed or cancelled): every reply is saved
   as a judge reply, priced at the batch rate; a request with none is marked failed with the reason
   (rating its instruction then makes that call live); the batch is marked done; then each of its
   instructions that this replica owns is rated from the ledger, published and recorded, as the
   gather sweep does. Instructions owned by another replica are rated by that replica's sweep.

So a restart at any point uploads nothing twice and loses nothing: saves are insert-or-ignore and
ratings come from the replies in the ledger.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from services.annotator.errors import ReplyPending
from services.annotator.handler import AnnotatorContext, existing_annotation, rate
from shared.backends.base import GenerationResult
from shared.backends.errors import PermanentBackendError
from shared.backends.openai_batch import OpenAIBatchClient
from shared.contracts import events as ev
from shared.contracts.topics import RESPONSES
from shared.errors import PermanentError, RetryableError
from shared.ledger.tables import JudgeBatchRow
from shared.runtime.kafka_runtime import KafkaRuntime

log = logging.getLogger(__name__)


class BatchRoundTrip:
    """The batch steps of one judge, run by ``step`` every poll interval on the leading replica."""

    def __init__(
        self,
        ctx: AnnotatorContext,
        client: OpenAIBatchClient,
        owns: Callable[[str], bool],
        publish: Callable[[list[ev.Annotation]], None],
    ) -> None:
        self._ctx = ctx
        self._client = client
        self._owns = owns
        self._publish = publish

    def step(self, now: datetime | None = None) -> int:
        """Send what is due, collect what is done; returns how many instructions it rated."""
        ctx = self._ctx
        waited_since = (now or datetime.now(UTC)) - timedelta(seconds=ctx.settings.batch_max_wait_s)
        while ctx.ledger.assemble_batch(
            ctx.judge.id, uuid.uuid4().hex, ctx.settings.batch_max_requests, waited_since
        ):
            pass
        rated = 0
        for batch in ctx.ledger.open_batches(ctx.judge.id):
            try:
                if batch.batch_id is None:
                    self._send(batch)
                else:
                    rated += self._collect(batch, batch.batch_id)
            except PermanentBackendError as error:  # e.g. a file the provider refuses: made live
                rated += self._finish(
                    batch, dict.fromkeys(self._ctx.ledger.batch_call_ids(batch.id), str(error))
                )
        return rated

    def _send(self, batch: JudgeBatchRow) -> None:
        ledger = self._ctx.ledger
        since = _epoch(batch.created_at)
        file_id = batch.file_id or self._client.find_file(batch.id, since)
        if file_id is None:
            file_id = self._client.upload(batch.id, ledger.batch_lines(batch.id))
        if batch.file_id is None:
            ledger.set_batch_file(batch.id, file_id)
        batch_id = self._client.find_batch(batch.id, since) or self._client.create(batch.id, file_id)
        ledger.set_batch_submitted(batch.id, batch_id)
        log.info(
            "judge %s: sent batch %s as %s (%d requests)",
            self._ctx.judge.id,
            batch.id,
            batch_id,
            batch.requests,
        )

    def _collect(self, batch: JudgeBatchRow, batch_id: str) -> int:
        status = self._client.status(batch_id)
        if not status.done:
            return 0
        failures: dict[str, str] = {}
        replied = 0
        for file_id in (status.output_file_id, status.error_file_id):
            for item in self._client.items(file_id) if file_id else ():
                if item.result is None:
                    failures[item.custom_id] = item.error or "no reply"
                else:
                    replied += self._save(item.custom_id, item.result, batch_id)
        for call_id in self._ctx.ledger.batch_call_ids(batch.id):
            if call_id not in failures and self._ctx.ledger.judge_reply(call_id) is None:
                failures[call_id] = f"not in the results of batch {batch_id} ({status.status})"
        self._ctx.metrics.batch_requests.labels(self._ctx.judge.id, "replied").inc(replied)
        if failures:
            log.warning(
                "judge %s: batch %s ended %s%s with %d requests unanswered, made live; first: %s",
                self._ctx.judge.id,
                batch_id,
                status.status,
                f" ({status.errors})" if status.errors else "",
                len(failures),
                next(iter(failures.values())),
            )
        return self._finish(batch, failures)

    def _finish(self, batch: JudgeBatchRow, failures: dict[str, str]) -> int:
        """Mark the batch done, then rate its instructions that this replica owns."""
        self._ctx.metrics.batch_requests.labels(self._ctx.judge.id, "failed").inc(len(failures))
        instruction_ids = self._ctx.ledger.finish_batch(batch.id, failures)
        return sum(
            self._rate(instruction_id) for instruction_id in instruction_ids if self._owns(instruction_id)
        )

    def _save(self, call_id: str, result: GenerationResult, batch_id: str) -> bool:
        """Keep one reply as the judge reply of its call; False for an id this judge did not queue."""
        ctx = self._ctx
        request = ctx.ledger.batch_request(call_id)
        if request is None or request.judge_id != ctx.judge.id:
            return False
        ctx.ledger.save_judge_reply(
            call_id,
            instruction_id=request.instruction_id,
            judge_id=ctx.judge.id,
            purpose=request.purpose,
            raw_reply=result.text,
            prompt_tokens=result.prompt_tokens,
            cached_prompt_tokens=result.cached_prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost=ctx.judge.call_cost(
                result.prompt_tokens, result.cached_prompt_tokens, result.completion_tokens, batch=True
            ),
            batch_id=batch_id,
        )
        return True

    def _rate(self, instruction_id: str) -> int:
        """Rate from the replies in the ledger, publish, then record (as the gather sweep does)."""
        ctx = self._ctx
        with ctx.locks.hold(instruction_id):
            if existing_annotation(instruction_id, ctx) is not None:
                return 0
            responses = ctx.ledger.responses_for(instruction_id)
            try:
                annotation = rate(responses[0].instruction, responses, ctx)
            except ReplyPending:
                return 0  # a repair request, queued for the next batch
            except (RetryableError, PermanentError) as error:
                log.warning(
                    "judge %s: cannot rate %s (its sweep tries again): %s",
                    ctx.judge.id,
                    instruction_id,
                    error,
                )
                return 0
            if annotation is None:
                return 0
            self._publish([annotation])
            ctx.ledger.record(annotation)
            return 1


def _epoch(moment: datetime) -> float:
    """SQLite gives back naive datetimes for timezone-aware columns; they were written in UTC."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def batch_timer(
    ctx: AnnotatorContext, client: OpenAIBatchClient, runtime: KafkaRuntime, stopped: threading.Event
) -> None:
    """The batch judge's background task: a step every ``batch_poll_interval_s`` on the replica that
    owns the judge's batch key. A retryable failure (the provider or the ledger away) is logged and
    tried again next time; anything else ends the task, and ``serve`` stops the service with it."""
    leader_key = f"batches:{ctx.judge.id}"
    trip = BatchRoundTrip(
        ctx, client, owns=lambda key: runtime.owns(RESPONSES.name, key), publish=runtime.publish
    )
    while not stopped.wait(ctx.settings.batch_poll_interval_s):
        if not runtime.owns(RESPONSES.name, leader_key):
            continue
        try:
            rated = trip.step()
        except RetryableError as error:
            log.warning("judge %s: batch step failed, retrying: %s", ctx.judge.id, error)
            continue
        if rated:
            log.info("judge %s: rated %d instructions from batch results", ctx.judge.id, rated)
