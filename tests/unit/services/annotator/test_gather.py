"""The gather rule of the annotator and its timeout sweep, on a real SQLite ledger: the verifiable
judge (no model), and an AI judge through a scripted backend (replies from the test judge's rule)."""

from datetime import UTC, datetime, timedelta

import pytest

from services.annotator.errors import RatingParseError
from services.annotator.gather import GatherSweep
from services.annotator.handler import AnnotatorContext, handle_response, rate
from shared.backends.base import GenerationRequest, GenerationResult
from shared.backends.errors import TransientBackendError
from shared.contracts import events as ev
from tests.integration.judge_responder import judge_responder, prompt_text
from tests.unit.services.annotator.context import annotator_context


def _context(tmp_path, judge: dict, backend=None) -> AnnotatorContext:
    return annotator_context(tmp_path, judge, backend, gather_timeout_s=60, min_answers=2)


@pytest.fixture
def ctx(tmp_path):
    return _context(tmp_path, {"id": "verify", "kind": "verifiable"})


class ScriptedJudge:
    """A judge backend for one handler's unit test: replies by the test judge's rule (see
    ``judge_responder``: GARBAGE-ALWAYS in a prompt never gets a readable reply); a prompt holding
    an entry of ``outages`` fails that many times first, as a judge that is away; BUG in a prompt
    raises what no backend should (a bug met on one instruction's data)."""

    def __init__(self, outages: dict[str, int] | None = None) -> None:
        self.outages = dict(outages or {})
        self.prompts: list[str] = []

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for request in requests:
            messages = [{"role": m.role, "content": m.text} for m in request.messages]
            prompt = prompt_text(messages)
            self.prompts.append(prompt)
            if "BUG" in prompt:
                raise ZeroDivisionError("a bug")
            for marker, left in self.outages.items():
                if marker in prompt and left > 0:
                    self.outages[marker] = left - 1
                    raise TransientBackendError("judge away")
            reply = judge_responder({"messages": messages, "response_format": request.response_format})
            results.append(GenerationResult(text=reply, finish_reason="stop"))
        return results


def _published_sweep(ctx: AnnotatorContext, page_size: int = 500) -> tuple[GatherSweep, list[ev.Annotation]]:
    published: list[ev.Annotation] = []
    return GatherSweep(ctx, owns=lambda key: True, publish=published.extend, page_size=page_size), published


def _answer(inst: ev.Instruction, model: str, text: str) -> ev.Response:
    return ev.Response(
        response_id=f"{inst.instruction_id}-{model}",
        instruction=inst,
        model_id=model,
        sampling={},
        text=text,
        status="answered",
        finish_reason="stop",
    )


INST = ev.Instruction(
    instruction_id="inst-gather-1", prompt="What colour?", models=["a", "b", "c"], reference="red"
)


def test_waits_for_every_assigned_answer_then_rates_once(ctx):
    assert handle_response(_answer(INST, "a", "red"), ctx) == []
    assert handle_response(_answer(INST, "b", "blue"), ctx) == []
    [annotation] = handle_response(_answer(INST, "c", "Red."), ctx)
    ratings = {r.model_id: r.ratings[ev.Aspect.HELPFULNESS].rating for r in annotation.rated}
    assert ratings == {"a": 5, "b": 1, "c": 5} and annotation.missing_model_ids == []
    assert handle_response(_answer(INST, "c", "Red."), ctx) == [annotation], "a redelivery re-publishes"


def test_timeout_rates_what_arrived_and_records_the_missing_model(ctx):
    handle_response(_answer(INST, "a", "red"), ctx)
    handle_response(_answer(INST, "b", "green"), ctx)
    now = datetime.now(UTC)
    sweep, published = _published_sweep(ctx)
    assert sweep.run(now=now) == 0, "not before the timeout"
    other_replica = GatherSweep(ctx, owns=lambda key: False, publish=published.extend)
    assert other_replica.run(now=now + timedelta(seconds=120)) == 0, "another replica's key"
    assert sweep.run(now=now + timedelta(seconds=120)) == 1
    [annotation] = published
    assert annotation.missing_model_ids == ["c"] and len(annotation.rated) == 2
    assert ctx.ledger.annotations_for(INST.instruction_id) == [annotation], "published, then recorded"
    assert handle_response(_answer(INST, "c", "red"), ctx) == [], "a late answer is kept, not rated"
    assert len(ctx.ledger.responses_for(INST.instruction_id)) == 3
    assert sweep.run(now=now + timedelta(seconds=240)) == 0 and len(published) == 1


def test_a_failed_publish_leaves_the_rating_to_the_next_sweep(ctx):
    """Published before recorded: a crash (here, a publish that fails) in between loses nothing."""
    handle_response(_answer(INST, "a", "red"), ctx)
    handle_response(_answer(INST, "b", "green"), ctx)
    later = datetime.now(UTC) + timedelta(seconds=120)

    def broker_gone(annotations: list[ev.Annotation]) -> None:
        raise RuntimeError("broker gone")

    with pytest.raises(RuntimeError):
        GatherSweep(ctx, owns=lambda key: True, publish=broker_gone).run(now=later)
    assert ctx.ledger.annotations_for(INST.instruction_id) == []
    sweep, published = _published_sweep(ctx)
    assert sweep.run(now=later) == 1 and len(published) == 1


def test_instructions_that_cannot_be_rated_neither_stop_nor_starve_the_sweep(tmp_path):
    """More never-ratable instructions than a page, a judge that is away, a reply that never reads,
    a bug: each stays with its own instruction, and every ratable one is rated."""
    judge = ScriptedJudge(outages={"FLAKY": 1})
    ctx = _context(tmp_path, {"id": "j", "model": "judge", "base_url": "http://judge.invalid/v1"}, judge)
    prompts = [f"GARBAGE-ALWAYS {n}" for n in range(5)] + ["BUG", "FLAKY", "plain"]
    for n, prompt in enumerate(prompts):
        inst = ev.Instruction(instruction_id=f"inst-gather-{n}", prompt=prompt, models=["a", "b", "c"])
        for model in ("a", "b"):
            handle_response(_answer(inst, model, f"{model} answers {n}"), ctx)
    lone = ev.Instruction(instruction_id="inst-lone", prompt="one answer", models=["a", "b", "c"])
    handle_response(_answer(lone, "a", "alone"), ctx)  # below min_answers: never swept
    later = datetime.now(UTC) + timedelta(seconds=120)
    sweep, published = _published_sweep(ctx, page_size=2)

    assert sweep.run(now=later) == 1, "the plain one; FLAKY's judge is away"
    failures = ctx.metrics.sweep_failures
    assert failures.labels("j", "permanent")._value.get() == 5
    assert failures.labels("j", "retryable")._value.get() == 1
    assert failures.labels("j", "error")._value.get() == 1
    assert sweep.run(now=later) == 1, "FLAKY's judge is back"
    assert sorted(a.instruction.prompt for a in published) == ["FLAKY", "plain"]
    calls = len(judge.prompts)
    assert sweep.run(now=later) == 0 and len(judge.prompts) == calls, "given up: no call, no count"
    assert failures.labels("j", "permanent")._value.get() == 5

    garbage = ev.Instruction(instruction_id="inst-gather-0", prompt=prompts[0], models=["a", "b", "c"])
    with pytest.raises(RatingParseError):  # the handler's path: to the DLQ
        handle_response(_answer(garbage, "c", "c answers 0"), ctx)
    assert sweep.run(now=later + timedelta(seconds=120)) == 0, "another answer: tried again"
    assert failures.labels("j", "permanent")._value.get() == 6


def test_a_reply_about_other_answers_is_never_reused(tmp_path):
    """The judge replies kept in the ledger are keyed by the answers shown: rating an instruction
    again with another answer set (an answer arrived after a failed sweep) asks the judge again,
    rather than reading a reply about three answers as one about four."""
    judge = ScriptedJudge()
    ctx = _context(tmp_path, {"id": "j", "model": "judge", "base_url": "http://judge.invalid/v1"}, judge)
    answers = [_answer(INST, model, f"{model} says red") for model in ("a", "b", "c")]
    assert len(rate(INST, answers[:2], ctx).rated) == 2
    annotation = rate(INST, answers, ctx)
    assert len(judge.prompts) == 2, "one call per answer set"
    assert ctx.metrics.parse_failures.labels("j")._value.get() == 0
    assert {r.model_id for r in annotation.rated} == {"a", "b", "c"}
    rate(INST, list(reversed(answers)), ctx)
    assert len(judge.prompts) == 2, "the same answers, in any order, reuse the reply"


def test_without_a_usable_reference_nothing_is_guessed(ctx):
    inst = INST.model_copy(
        update={"instruction_id": "inst-gather-2", "reference": "Describe the scene in detail."}
    )
    for model in ("a", "b", "c"):
        assert handle_response(_answer(inst, model, "red"), ctx) == []
    assert ctx.ledger.annotations_for(inst.instruction_id) == []
