"""All answers of an instruction -> one judge's ratings. Pure logic over the ledger and the backend.

Gather rule: an instruction is rated once every assigned model has answered (models x samples), or,
by the timer in ``services.annotator.gather``, once ``gather_timeout_s`` passed since its newest
answer with at least ``min_answers`` answers (the missing models are recorded on the annotation).
A rating set is immutable: an answer arriving after its instruction was rated is kept in the ledger
but not rated (counted as ``late_answer``); a redelivered answer that was rated re-publishes the
annotation.

Paid calls: every judge reply is written to the ledger under a deterministic call id (instruction,
judge, purpose and the answers shown) before it is parsed, and looked up before any call, so a crash
and redelivery never pays twice.

Batch judges (``batch: true``): a call with no reply yet is queued in the ledger under that same id
and the instruction waits (``ReplyPending``); ``services.annotator.batches`` sends the queue to the
provider's Batch API, saves the replies as judge replies and rates the instruction again, now from
the ledger. Every call of a pass (each aspect, the swap pass) is queued before the instruction
waits, so one batch round trip serves them all; only a repair request needs another. A request the
batch failed (or let expire) is made live.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from services.annotator.errors import RatingParseError, ReplyPending
from services.annotator.metrics import JudgeMetrics
from services.annotator.ordering import (
    average_ratings,
    presentation_order,
    reverse_order,
    self_agreement,
    unshuffle,
)
from services.annotator.parsing import AspectRating as ParsedAspect
from services.annotator.parsing import ParsedRatings, parse_ratings
from services.annotator.rubric import (
    JudgePrompt,
    ReplyFormat,
    build_all_in_one_prompt,
    build_per_aspect_prompt,
    build_repair_prompt,
    ratings_json_schema,
)
from services.annotator.rubric import PromptTemplate as JudgeTemplate
from services.annotator.settings import AnnotatorSettings
from services.annotator.verifiable import SkipReason, rate_with_reference
from shared.backends.base import Backend, ChatMessage, GenerationRequest
from shared.backends.openai_batch import OpenAIBatchClient
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts.events import Aspect, SamplingParams
from shared.contracts.ids import annotation_id
from shared.ledger import Ledger
from shared.registry import JudgeEntry, Registry, assigned_models

ALL_ASPECTS: tuple[Aspect, ...] = tuple(Aspect)


class StripedLocks:
    """A fixed set of locks, one per key hash: lanes and the timer never rate one instruction at once."""

    def __init__(self, stripes: int = 256) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._locks[zlib.crc32(key.encode()) % len(self._locks)]:
            yield


@dataclass(frozen=True)
class AnnotatorContext:
    judge: JudgeEntry
    registry: Registry
    backend: Backend | None  # None for the verifiable judge
    ledger: Ledger
    blobs: BlobStore
    settings: AnnotatorSettings
    metrics: JudgeMetrics
    template: JudgeTemplate | None = None
    batches: OpenAIBatchClient | None = None  # set for a judge with ``batch: true``
    locks: StripedLocks = field(default_factory=StripedLocks)


@dataclass
class _Usage:
    calls: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(
        self, prompt_tokens: int, cached_prompt_tokens: int, completion_tokens: int, cost_usd: float
    ) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.cached_prompt_tokens += cached_prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += cost_usd


def expected_answers(instruction: ev.Instruction, registry: Registry) -> int:
    models = assigned_models(instruction.models, registry, instruction.instruction_id)
    return len(models) * instruction.samples_per_model


def handle_response(event: ev.Response, ctx: AnnotatorContext) -> list[ev.Annotation]:
    inst = event.instruction
    ctx.ledger.record(inst, event)
    with ctx.locks.hold(inst.instruction_id):
        existing = existing_annotation(inst.instruction_id, ctx)
        if existing is not None:
            if event.response_id in {r.response_id for r in existing.rated}:
                return [existing]  # redelivery after a crash before the publish
            ctx.metrics.skipped.labels(ctx.judge.id, "late_answer").inc()
            return []
        responses = ctx.ledger.responses_for(inst.instruction_id)
        if len(responses) < expected_answers(inst, ctx.registry):
            return []
        try:
            annotation = rate(inst, responses, ctx)
        except ReplyPending:
            return []  # its requests are queued in the ledger; the batch's results rate it
        if annotation is None:
            return []
        ctx.ledger.record(annotation)  # before the runtime publishes it: a redelivery re-publishes it
    return [annotation]


def existing_annotation(instruction_id: str, ctx: AnnotatorContext) -> ev.Annotation | None:
    return next((a for a in ctx.ledger.annotations_for(instruction_id) if a.judge_id == ctx.judge.id), None)


def rate(inst: ev.Instruction, responses: list[ev.Response], ctx: AnnotatorContext) -> ev.Annotation | None:
    """Rate every answer (in response-id order); None when skipped. The caller records the annotation.

    Raises ``ReplyPending`` when a batch judge's replies are not all in yet."""
    responses = sorted(responses, key=lambda r: r.response_id)
    usage = _Usage()
    self_agree = None
    if ctx.judge.kind == "verifiable":
        rated = rate_with_reference([r.text for r in responses], inst.reference or "")
        if isinstance(rated, SkipReason):
            ctx.metrics.skipped.labels(ctx.judge.id, "no_usable_reference").inc()
            return None
        ratings = [{a: _contract_rating(r.rating, r.rationale) for a, r in per.items()} for per in rated]
        positions = list(range(len(responses)))
        mode = "verifiable"
    else:
        order = presentation_order(inst.instruction_id, [r.response_id for r in responses])
        back = reverse_order(order)
        passes = [(order, "pass1")] + ([(back, "swap")] if ctx.judge.swap else [])
        first, *swapped = _judge_passes(inst, responses, passes, ctx, usage)
        positions = [order.index(i) for i in range(len(responses))]
        ratings = [
            {a: _contract_rating(r.rating, r.rationale) for a, r in per.items()} for per in first.answers
        ]
        if swapped:
            second = swapped[0]
            self_agree = self_agreement(first, second)
            means = average_ratings(first, second)
            ratings = [
                {a: _contract_rating(means[i][a], f"{first.answers[i][a].rationale}") for a in means[i]}
                for i in range(len(responses))
            ]
        mode = ctx.judge.mode
    assigned = assigned_models(inst.models, ctx.registry, inst.instruction_id)
    answered = {r.model_id for r in responses}
    annotation = ev.Annotation(
        annotation_id=annotation_id(
            inst.instruction_id, ctx.judge.id, mode, [r.response_id for r in responses]
        ),
        instruction=inst,
        judge_id=ctx.judge.id,
        mode=mode,
        rated=[
            ev.RatedResponse(
                response_id=r.response_id,
                model_id=r.model_id,
                text=r.text,
                shown_position=positions[i],
                ratings=ratings[i],
            )
            for i, r in enumerate(responses)
        ],
        missing_model_ids=sorted(set(assigned) - answered),
        self_agreement=self_agree,
        usage=ev.JudgeUsage(
            calls=usage.calls,
            prompt_tokens=usage.prompt_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd,
        ),
    )
    return annotation


def _contract_rating(value: float, rationale: str) -> ev.AspectRating:
    raw = str(int(value)) if float(value).is_integer() else f"{value:g}"
    return ev.AspectRating(rating=value, raw=raw, rationale=rationale)


def _judge_passes(
    inst: ev.Instruction,
    responses: Sequence[ev.Response],
    passes: list[tuple[list[int], str]],
    ctx: AnnotatorContext,
    usage: _Usage,
) -> list[ParsedRatings]:
    """Each pass (presentation order, tag) rated and put back in response order. A batch judge
    queues the calls of every pass before the instruction waits (``ReplyPending``)."""
    images = [ctx.blobs.get(uri) for uri in inst.image_uris]
    groups = [ALL_ASPECTS] if ctx.judge.mode == "all_in_one" else [(a,) for a in ALL_ASPECTS]
    rated, pending = [], False
    for order, tag in passes:
        shown = [responses[i] for i in order]
        merged: list[dict[Aspect, ParsedAspect]] = [{} for _ in shown]
        for aspects in groups:
            try:
                parsed = _judge_call(inst, shown, images, aspects, f"{tag}:{ctx.judge.mode}", ctx, usage)
            except ReplyPending:
                pending = True
                continue
            for i, per in enumerate(parsed.answers):
                merged[i].update(per)
        rated.append(unshuffle(ParsedRatings(answers=tuple(merged)), order))
    if pending:
        raise ReplyPending(f"{inst.instruction_id}: waiting for the judge's batch")
    return rated


def _judge_call(
    inst: ev.Instruction,
    shown: Sequence[ev.Response],
    images: list[bytes],
    aspects: tuple[Aspect, ...],
    tag: str,
    ctx: AnnotatorContext,
    usage: _Usage,
) -> ParsedRatings:
    """The ratings of ``aspects`` for ``shown`` (in that order), with one repair request if needed."""
    reply_format = ReplyFormat.JSON if ctx.judge.structured_output else ReplyFormat.MARKDOWN
    answers = [r.text for r in shown]
    purpose = f"{tag}:{'+'.join(a.value for a in aspects)}"
    prompt_messages = _prompt(inst, answers, aspects, reply_format, ctx).messages()
    request = _request(prompt_messages, images, len(shown), aspects, ctx)
    reply = _paid_call(inst.instruction_id, shown, purpose, request, ctx, usage)
    try:
        return parse_ratings(reply, len(shown), aspects, reply_format)
    except RatingParseError as exc:
        ctx.metrics.parse_failures.labels(ctx.judge.id).inc()
        repair = build_repair_prompt(reply, str(exc), len(shown), aspects, reply_format)
        messages = [
            *prompt_messages,
            ChatMessage(role="assistant", text=reply),
            ChatMessage(role="user", text=repair),
        ]
        repaired = _paid_call(
            inst.instruction_id,
            shown,
            purpose + ":repair",
            _request(messages, images, len(shown), aspects, ctx),
            ctx,
            usage,
        )
        parsed = parse_ratings(repaired, len(shown), aspects, reply_format)  # a second failure: DLQ
        ctx.metrics.repairs.labels(ctx.judge.id).inc()
        return parsed


def _prompt(
    inst: ev.Instruction,
    answers: list[str],
    aspects: Sequence[Aspect],
    reply_format: ReplyFormat,
    ctx: AnnotatorContext,
) -> JudgePrompt:
    aspect = aspects[0] if len(aspects) == 1 else None
    if ctx.template is not None:
        return JudgePrompt(quoted=ctx.template.render(inst.prompt, answers, inst.reference, aspect))
    if aspect is not None:
        return build_per_aspect_prompt(aspect, inst.prompt, answers, inst.reference, reply_format)
    return build_all_in_one_prompt(inst.prompt, answers, inst.reference, reply_format)


def _request(
    messages: list[ChatMessage],
    images: list[bytes],
    n_answers: int,
    aspects: Sequence[Aspect],
    ctx: AnnotatorContext,
) -> GenerationRequest:
    schema = (
        {"type": "json_schema", "json_schema": ratings_json_schema(n_answers, aspects)}
        if ctx.judge.structured_output
        else None
    )
    return GenerationRequest(
        messages=messages,
        images=images,
        params=SamplingParams(temperature=0.0, max_tokens=ctx.judge.max_tokens),
        response_format=schema,
    )


def _paid_call(
    instruction_id: str,
    shown: Sequence[ev.Response],
    purpose: str,
    request: GenerationRequest,
    ctx: AnnotatorContext,
    usage: _Usage,
) -> str:
    call_id = Ledger.judge_call_id(instruction_id, ctx.judge.id, purpose, [r.response_id for r in shown])
    kept = ctx.ledger.judge_reply(call_id)
    if kept is not None:
        ctx.metrics.reused.labels(ctx.judge.id).inc()
        usage.add(kept.prompt_tokens, kept.cached_prompt_tokens, kept.completion_tokens, kept.cost_usd)
        return kept.raw_reply
    if ctx.batches is not None:
        queued = ctx.ledger.batch_request(call_id)
        if queued is None:
            ctx.ledger.queue_batch_request(
                call_id,
                judge_id=ctx.judge.id,
                instruction_id=instruction_id,
                purpose=purpose,
                body=ctx.batches.request_body(request),
            )
            ctx.metrics.batch_requests.labels(ctx.judge.id, "queued").inc()
        if queued is None or queued.state != "failed":
            raise ReplyPending(f"{instruction_id}: {purpose} waits for the judge's batch")
        # the batch failed it (or let it expire): made live, below
    assert ctx.backend is not None, "an AI judge needs a backend"
    started = time.monotonic()
    [result] = ctx.backend.generate([request])
    cost = ctx.judge.call_cost(result.prompt_tokens, result.cached_prompt_tokens, result.completion_tokens)
    ctx.ledger.save_judge_reply(
        call_id,
        instruction_id=instruction_id,
        judge_id=ctx.judge.id,
        purpose=purpose,
        raw_reply=result.text,
        prompt_tokens=result.prompt_tokens,
        cached_prompt_tokens=result.cached_prompt_tokens,
        completion_tokens=result.completion_tokens,
        cost=cost,
    )
    m = ctx.metrics
    m.calls.labels(ctx.judge.id, purpose.split(":")[0]).inc()
    m.latency.labels(ctx.judge.id).observe(time.monotonic() - started)
    m.tokens.labels(ctx.judge.id, "in").inc(result.prompt_tokens)
    m.tokens.labels(ctx.judge.id, "cached_in").inc(result.cached_prompt_tokens)
    m.tokens.labels(ctx.judge.id, "out").inc(result.completion_tokens)
    m.spend.labels(ctx.judge.id).inc(cost.total_usd)
    usage.add(result.prompt_tokens, result.cached_prompt_tokens, result.completion_tokens, cost.total_usd)
    return result.text
