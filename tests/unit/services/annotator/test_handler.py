"""The annotator's handler in the modes users turn on (swap, per-aspect) and what it charges, on a
real SQLite ledger with a scripted judge backend that prefers whatever it is shown first."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.annotator.handler import AnnotatorContext, handle_response, rate
from shared.backends.base import GenerationRequest, GenerationResult
from shared.contracts import events as ev
from shared.contracts.events import Aspect
from tests.integration.judge_responder import asked_aspects, prompt_text, shown_answers
from tests.unit.services.annotator.context import annotator_context

H, V, E = Aspect.HELPFULNESS, Aspect.VISUAL_FAITHFULNESS, Aspect.ETHICAL_CONSIDERATIONS
# What each answer deserves on Helpfulness and Visual Faithfulness; Ethical Considerations is 5.
DESERVED = {"A blurry guess.": 2, "A red square on white.": 4}
PROMPT_TOKENS, COMPLETION_TOKENS = 1000, 100
PRICE_IN, PRICE_OUT = 0.5, 2.0  # USD per 1k tokens


class FirstShownBiasedJudge:
    """Rates each shown answer by ``DESERVED``, one point higher when it is shown first: the
    position bias that swap mode is there to cancel. Every call costs the same tokens."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for request in requests:
            prompt = prompt_text([{"role": m.role, "content": m.text} for m in request.messages])
            self.prompts.append(prompt)
            lines = []
            for position, text in enumerate(shown_answers(prompt)):
                lines.append(f"## Answer {position + 1}")
                for aspect in asked_aspects(prompt):
                    rating = 5 if aspect is E else DESERVED[text] + (position == 0)
                    lines += [f"### {aspect.value}", f"Rating: {rating}", "Rationale: as deserved."]
            results.append(
                GenerationResult(
                    text="\n".join(lines),
                    finish_reason="stop",
                    prompt_tokens=PROMPT_TOKENS,
                    completion_tokens=COMPLETION_TOKENS,
                )
            )
        return results


def _context(tmp_path: Path, backend: FirstShownBiasedJudge, **judge: object) -> AnnotatorContext:
    entry = {"id": "judge", "model": "judge-model", "base_url": "http://judge/v1", **judge}
    entry |= {"price_per_1k_input": PRICE_IN, "price_per_1k_output": PRICE_OUT}
    return annotator_context(tmp_path, entry, backend, models=("a", "b"))


def _responses() -> list[ev.Response]:
    inst = ev.Instruction(instruction_id="inst-handler-1", prompt="What is shown?", models=["a", "b"])
    return [
        ev.Response(
            response_id=f"{inst.instruction_id}-{model}",
            instruction=inst,
            model_id=model,
            sampling={},
            text=text,
            status="answered",
            finish_reason="stop",
        )
        for model, text in zip(("a", "b"), DESERVED, strict=True)
    ]


def _annotate(ctx: AnnotatorContext) -> ev.Annotation:
    first, second = _responses()
    assert handle_response(first, ctx) == []  # waits for the second answer
    [annotation] = handle_response(second, ctx)
    return annotation


def _ratings(annotation: ev.Annotation) -> dict[str, dict[Aspect, float]]:
    return {r.text: {a: rating.rating for a, rating in r.ratings.items()} for r in annotation.rated}


@pytest.mark.parametrize("mode, calls_per_pass", [("all_in_one", 1), ("per_aspect", 3)])
def test_swap_rates_twice_in_mirrored_order_and_averages_the_position_bias_away(
    tmp_path: Path, mode: str, calls_per_pass: int
) -> None:
    judge = FirstShownBiasedJudge()
    ctx = _context(tmp_path, judge, mode=mode, swap=True)

    annotation = _annotate(ctx)

    assert len(judge.prompts) == 2 * calls_per_pass
    firsts = {shown_answers(prompt)[0] for prompt in judge.prompts}
    assert firsts == set(DESERVED), "each answer is shown first in one of the two passes"
    # Each answer got its due + 1 in one pass and its due in the other: the mean is due + 0.5.
    assert _ratings(annotation) == {
        text: {H: due + 0.5, V: due + 0.5, E: 5} for text, due in DESERVED.items()
    }
    # The passes agree on Ethical Considerations only: 2 of the 6 (answer, aspect) ratings.
    assert annotation.self_agreement == pytest.approx(2 / 6)
    assert annotation.mode == mode


def test_per_aspect_mode_asks_one_aspect_per_call_and_keeps_one_reply_per_call(tmp_path: Path) -> None:
    judge = FirstShownBiasedJudge()
    ctx = _context(tmp_path, judge, mode="per_aspect")

    annotation = _annotate(ctx)

    assert [asked_aspects(prompt) for prompt in judge.prompts] == [[H], [V], [E]]
    assert annotation.self_agreement is None
    # A fresh annotator (the first crashed before it recorded the annotation) pays for nothing:
    # every one of the three replies was kept under its own purpose.
    again = FirstShownBiasedJudge()
    fresh = _context(tmp_path, again, mode="per_aspect")

    rerated = rate(annotation.instruction, _responses(), fresh)
    assert again.prompts == []
    assert rerated is not None and _ratings(rerated) == _ratings(annotation)


def test_an_annotation_carries_its_judge_spend_at_the_registry_prices(tmp_path: Path) -> None:
    judge = FirstShownBiasedJudge()
    ctx = _context(tmp_path, judge, mode="per_aspect", swap=True)

    annotation = _annotate(ctx)

    per_call = (PROMPT_TOKENS * PRICE_IN + COMPLETION_TOKENS * PRICE_OUT) / 1000
    assert annotation.usage.calls == 6
    assert (annotation.usage.prompt_tokens, annotation.usage.completion_tokens) == (6000, 600)
    assert annotation.usage.cost_usd == pytest.approx(6 * per_call)
    assert ctx.metrics.spend.labels("judge")._value.get() == pytest.approx(6 * per_call)
    # A redelivered answer returns the recorded annotation and charges nothing more.
    assert handle_response(_responses()[1], ctx) == [annotation]
    assert len(judge.prompts) == 6
