"""The gather timeout: rate an instruction whose missing answers did not come in time.

Every ``sweep_interval_s`` a timer pages through the ledger's instructions with at least
``min_answers`` answers, none newer than ``gather_timeout_s`` and no rating by this judge, and rates
those whose key this replica owns (under the same per-instruction lock as the handler's lanes).

A failure stays with its instruction, as on the handler's path it stays with its message: a
retryable one (the judge or the ledger away for a while) is tried again next sweep; a permanent one
(a reply unreadable even after the repair request, a numbered-answer template that does not fit the
answers that arrived), an unexpected error (logged with its traceback) and a verifiable judge's skip
are given up until another answer arrives. The other instructions are rated either way. A failure
of the sweep itself that is not retryable stops the service, as a crashed handler does.

An annotation is published before it is recorded. A crash between the two leaves it unrecorded, so
the next sweep rates it again (from the judge replies kept in the ledger, at no cost) and publishes
it again. The other order could leave it recorded and never published, and no redelivery would
repair that: nothing on a topic stands for a timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from services.annotator.errors import ReplyPending
from services.annotator.handler import AnnotatorContext, existing_annotation, rate
from shared.contracts import events as ev
from shared.contracts.topics import RESPONSES
from shared.errors import PermanentError, RetryableError
from shared.runtime.kafka_runtime import KafkaRuntime

log = logging.getLogger(__name__)

PAGE_SIZE = 500


class GatherSweep:
    """One replica's sweeps. It remembers the instructions it gave up on, with how many answers they
    had, so later sweeps neither read, pay for nor count them again until another answer arrives."""

    def __init__(
        self,
        ctx: AnnotatorContext,
        owns: Callable[[str], bool],
        publish: Callable[[list[ev.Annotation]], None],
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._ctx = ctx
        self._owns = owns
        self._publish = publish
        self._page_size = page_size
        self._given_up: dict[str, int] = {}

    def run(self, now: datetime | None = None) -> int:
        """One sweep; returns how many instructions it rated (each published, then recorded)."""
        ctx = self._ctx
        settled_before = (now or datetime.now(UTC)) - timedelta(seconds=ctx.settings.gather_timeout_s)
        rated, after = 0, None
        while True:
            page = ctx.ledger.unrated_instructions(
                ctx.judge.id, settled_before, ctx.settings.min_answers, after=after, limit=self._page_size
            )
            for instruction_id, answers in page:
                if self._given_up.get(instruction_id) != answers and self._owns(instruction_id):
                    rated += self._rate(instruction_id)
            if len(page) < self._page_size:
                return rated
            after = page[-1][0]

    def _rate(self, instruction_id: str) -> int:
        ctx = self._ctx
        with ctx.locks.hold(instruction_id):
            if existing_annotation(instruction_id, ctx) is not None:
                return 0  # rated meanwhile by the handler
            responses = ctx.ledger.responses_for(instruction_id)
            try:
                annotation = rate(responses[0].instruction, responses, ctx)
            except ReplyPending:
                return 0  # queued for the judge's batch, whose results rate it
            except RetryableError as error:
                ctx.metrics.sweep_failures.labels(ctx.judge.id, "retryable").inc()
                log.warning("gather timeout: %s failed, retrying next sweep: %s", instruction_id, error)
                return 0
            except PermanentError as error:
                ctx.metrics.sweep_failures.labels(ctx.judge.id, "permanent").inc()
                log.error(
                    "gather timeout: cannot rate %s, until another answer arrives: %s", instruction_id, error
                )
                annotation = None
            except Exception:  # a bug met on this instruction's data: loud in the log, the others go on
                ctx.metrics.sweep_failures.labels(ctx.judge.id, "error").inc()
                log.exception(
                    "gather timeout: %s given up until another answer (unexpected error)", instruction_id
                )
                annotation = None
            if annotation is None:
                self._given_up[instruction_id] = len(responses)
                return 0
            self._publish([annotation])
            ctx.ledger.record(annotation)
            return 1


def gather_timer(ctx: AnnotatorContext, runtime: KafkaRuntime, stopped: threading.Event) -> None:
    """The annotator's background task: a sweep every interval, of this replica's keys only. A sweep
    that meets a retryable failure as a whole (the ledger away) is logged and the next one runs as
    planned; anything else ends the task, and ``serve`` then stops the service with the error."""
    sweep = GatherSweep(ctx, owns=lambda key: runtime.owns(RESPONSES.name, key), publish=runtime.publish)
    while not stopped.wait(ctx.settings.sweep_interval_s):
        try:
            rated = sweep.run()
        except RetryableError as error:
            log.warning(
                "gather timeout: sweep failed, retrying in %.0fs: %s", ctx.settings.sweep_interval_s, error
            )
            continue
        if rated:
            log.info("rated %d instructions after the gather timeout", rated)
