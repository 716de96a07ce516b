"""Judge prompts: what they show, the layout they ask for, and user templates."""

import json
import re
from pathlib import Path

import jsonschema
import pytest

from services.annotator.errors import PromptTemplateError, TemplateAnswerCountError
from services.annotator.parsing import parse_json_ratings, parse_markdown_ratings
from services.annotator.rubric import (
    ALL_ASPECTS,
    MAX_QUOTED_REPLY_CHARS,
    RUBRICS,
    Aspect,
    JudgePrompt,
    PromptTemplate,
    ReplyFormat,
    build_all_in_one_prompt,
    build_per_aspect_prompt,
    build_repair_prompt,
    format_answers,
    markdown_layout,
    quote_mark,
    quote_note,
    ratings_json_schema,
)

ANSWERS = ["A brown dog on a sofa.", "A cat.", "Two dogs playing outside.", "I cannot see the image."]


def test_aspect_values_are_the_dataset_keys() -> None:
    assert [aspect.value for aspect in ALL_ASPECTS] == [
        "Helpfulness",
        "Visual Faithfulness",
        "Ethical Considerations",
    ]
    assert Aspect("Visual Faithfulness") is Aspect.VISUAL_FAITHFULNESS


def test_every_rubric_defines_all_five_levels() -> None:
    for aspect in ALL_ASPECTS:
        assert len(RUBRICS[aspect].levels) == 5
        assert all(level.strip() for level in RUBRICS[aspect].levels)


def _text(prompt: JudgePrompt) -> str:
    return "\n\n".join(message.text for message in prompt.messages())


def test_all_in_one_prompt_shows_instruction_rubrics_and_answers_in_order() -> None:
    prompt = build_all_in_one_prompt("What animal is on the sofa?", ANSWERS)
    assert "What animal is on the sofa?" in prompt.quoted
    for aspect in ALL_ASPECTS:
        assert RUBRICS[aspect].question in prompt.fixed
        assert f"5: {RUBRICS[aspect].levels[4]}" in prompt.fixed
    positions = [
        prompt.quoted.index(f"[Answer {n}]\n{text}\n[End of Answer {n}]") for n, text in enumerate(ANSWERS, 1)
    ]
    assert positions == sorted(positions)
    assert "[Answer 5]" not in prompt.quoted
    assert "Reference" not in _text(prompt)
    assert prompt.fixed.endswith(markdown_layout(4, ALL_ASPECTS))


@pytest.mark.parametrize("mode", ["all_in_one", "per_aspect"])
@pytest.mark.parametrize("reply_format", list(ReplyFormat))
def test_the_fixed_part_is_byte_identical_across_instructions_and_comes_first(
    mode: str, reply_format: ReplyFormat
) -> None:
    """Providers cache a prompt's prefix: the rubric and reply format must come before anything
    that differs between instructions (instruction, answers, reference, quote mark, images)."""

    def build(instruction: str, answers: list[str], reference: str | None) -> JudgePrompt:
        if mode == "per_aspect":
            return build_per_aspect_prompt(Aspect.HELPFULNESS, instruction, answers, reference, reply_format)
        return build_all_in_one_prompt(instruction, answers, reference, reply_format)

    one = build("What animal is on the sofa?", ANSWERS, None)
    other = build("How many dogs?", [a.upper() for a in ANSWERS], "Two dogs.")
    assert one.fixed == other.fixed
    assert "# Reply format" in one.fixed and "# Aspects" in one.fixed
    for varying in ("sofa", "<<", "[Answer"):
        assert varying not in one.fixed
    assert [m.role for m in one.messages()] == ["system", "user"]
    assert one.messages()[0].text == one.fixed


def test_reference_answer_is_shown_when_given() -> None:
    prompt = build_all_in_one_prompt("How many dogs?", ANSWERS, reference="Two dogs.").quoted
    assert "[Reference]\nTwo dogs.\n[End of Reference]" in prompt
    assert prompt.index("[Reference]") < prompt.index("[Answer 1]")


def test_per_aspect_prompt_shows_only_that_rubric() -> None:
    prompt = _text(build_per_aspect_prompt(Aspect.VISUAL_FAITHFULNESS, "Describe it.", ANSWERS[:2]))
    assert RUBRICS[Aspect.VISUAL_FAITHFULNESS].question in prompt
    assert RUBRICS[Aspect.HELPFULNESS].question not in prompt
    assert RUBRICS[Aspect.ETHICAL_CONSIDERATIONS].question not in prompt
    assert "### Helpfulness" not in prompt


def fill_layout(layout: str, ratings: list[int]) -> str:
    """What an obedient judge writes: the requested layout with its placeholders filled in."""
    values = iter(ratings)
    filled = re.sub(r"<1-5>", lambda _: str(next(values)), layout)
    return filled.replace("<why>", "Because.")


def test_a_reply_in_the_requested_layout_parses_back() -> None:
    prompt = build_all_in_one_prompt("Describe it.", ANSWERS).fixed
    layout = prompt[prompt.index("## Answer 1\n### Helpfulness") :]
    ratings = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
    parsed = parse_markdown_ratings(fill_layout(layout, ratings), 4, ALL_ASPECTS)
    assert [parsed.rating(a, aspect) for a in range(4) for aspect in ALL_ASPECTS] == ratings
    assert parsed.answers[3][Aspect.ETHICAL_CONSIDERATIONS].rationale == "Because."


def test_json_prompt_names_every_answer_key() -> None:
    prompt = _text(build_all_in_one_prompt("Describe it.", ANSWERS, reply_format=ReplyFormat.JSON))
    assert "answer_1, answer_2, answer_3, answer_4" in prompt
    assert "## Answer 1\n### Helpfulness" not in prompt


def _objects(schema: dict):
    if schema.get("type") == "object":
        yield schema
        for child in schema["properties"].values():
            yield from _objects(child)


def test_json_schema_is_strict_and_accepts_exactly_the_expected_shape() -> None:
    spec = ratings_json_schema(2, ALL_ASPECTS)
    assert spec["strict"] is True and spec["name"]
    for obj in _objects(spec["schema"]):
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    good = {
        f"answer_{n}": {aspect.value: {"rating": n + 2, "rationale": "ok"} for aspect in ALL_ASPECTS}
        for n in (1, 2)
    }
    jsonschema.validate(good, spec["schema"])
    assert parse_json_ratings(json.dumps(good), 2, ALL_ASPECTS).rating(1, Aspect.HELPFULNESS) == 4
    bad_rating = json.loads(json.dumps(good))
    bad_rating["answer_1"]["Helpfulness"]["rating"] = 6
    missing_answer = {"answer_1": good["answer_1"]}
    for bad in (bad_rating, missing_answer):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, spec["schema"])


def test_repair_prompt_quotes_the_problem_and_reply_and_restates_the_layout() -> None:
    prompt = build_repair_prompt("Answer 1: great", "Answer 1: no ratings found", 2, [Aspect.HELPFULNESS])
    assert "Problem: Answer 1: no ratings found" in prompt
    assert "<<<\nAnswer 1: great\n>>>" in prompt
    assert prompt.endswith(markdown_layout(2, [Aspect.HELPFULNESS]))


def test_repair_prompt_cuts_a_runaway_reply() -> None:
    prompt = build_repair_prompt("x" * (MAX_QUOTED_REPLY_CHARS * 3), "no ratings found", 1, ALL_ASPECTS)
    assert prompt.count("x") < MAX_QUOTED_REPLY_CHARS + 100
    assert "[... reply cut here ...]" in prompt


def test_prompts_refuse_an_empty_request() -> None:
    with pytest.raises(ValueError, match="at least one answer"):
        build_all_in_one_prompt("Describe it.", [])
    with pytest.raises(ValueError, match="distinct aspects"):
        ratings_json_schema(2, [Aspect.HELPFULNESS, Aspect.HELPFULNESS])


# --- user templates ------------------------------------------------------------------------------


def test_template_from_file_renders_all_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "judge.txt"
    path.write_text(
        "Rate {aspect}.\nInstruction: {instruction}\nReference: {reference}\n{answers}\nFormat: {{json}}\n",
        encoding="utf-8",
    )
    template = PromptTemplate.from_file(path)
    assert template.uses_aspect
    text = template.render("Describe it.", ANSWERS[:2], reference="A dog.", aspect=Aspect.HELPFULNESS)
    mark = quote_mark("Describe it.", "A dog.", *ANSWERS[:2])
    assert text == (
        f"Rate Helpfulness.\nInstruction: Describe it.\nReference: A dog.\n{quote_note(mark)}\n\n"
        f"{mark} [Answer 1]\nA brown dog on a sofa.\n[End of Answer 1] {mark}\n\n"
        f"{mark} [Answer 2]\nA cat.\n[End of Answer 2] {mark}\n"
        "Format: {json}\n"
    )


def test_template_with_numbered_answers_like_the_released_one() -> None:
    template = PromptTemplate.from_text(
        "Instruction: {instruction}\n- <text 1> {answer_1}\n- <text 2> {answer_2}\n"
    )
    assert (
        template.render("Q?", ["first", "second"]) == "Instruction: Q?\n- <text 1> first\n- <text 2> second\n"
    )
    with pytest.raises(TemplateAnswerCountError, match=r"shows answers \[1, 2\] but this instruction has 1"):
        template.render("Q?", ["only one"])  # the gather timeout rated what arrived
    with pytest.raises(TemplateAnswerCountError, match=r"shows answers \[1, 2\] but this instruction has 3"):
        template.render("Q?", ["one", "two", "three"])  # the judge would never see the third
    with_all = PromptTemplate.from_text("{instruction}\nFirst: {answer_1}\nAll: {answers}")
    mark = quote_mark("Q?", "", "a", "b", "c")
    assert with_all.render("Q?", ["a", "b", "c"]) == (
        f"Q?\nFirst: a\nAll: {quote_note(mark)}\n\n{format_answers(['a', 'b', 'c'], mark)}"
    )
    with pytest.raises(TemplateAnswerCountError, match=r"uses \{answer_1\} but only 0 answers"):
        with_all.render("Q?", [])


def test_a_template_must_fit_the_judge_mode() -> None:
    per_aspect = PromptTemplate.from_text("{instruction} {answers} {aspect}")
    per_aspect.check_mode("per_aspect")
    with pytest.raises(PromptTemplateError, match="all_in_one judge must not use the {aspect}"):
        per_aspect.check_mode("all_in_one")
    with pytest.raises(PromptTemplateError, match="per_aspect judge needs the {aspect}"):
        PromptTemplate.from_text("{instruction} {answers}").check_mode("per_aspect")


def test_missing_reference_renders_empty_and_missing_aspect_is_an_error() -> None:
    template = PromptTemplate.from_text("{instruction} [{reference}] {answers} {aspect}")
    with pytest.raises(PromptTemplateError, match=r"uses \{aspect\} but no aspect was given"):
        template.render("Q?", ["a"])
    mark = quote_mark("Q?", "", "a")
    assert template.render("Q?", ["a"], aspect=Aspect.HELPFULNESS) == (
        f"Q? [] {quote_note(mark)}\n\n{mark} [Answer 1]\na\n[End of Answer 1] {mark} Helpfulness"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("{instruction} {answers} {question}", "unknown placeholder {question}"),
        ("{instruction} {answers} {}", "unknown placeholder {}"),
        ("{instruction} {answers} {answer_0}", "unknown placeholder {answer_0}"),
        ("{instruction} {answers.upper}", "unknown placeholder {answers.upper}"),
        ("{instruction} {answers!r}", "placeholder {answers} must not have a format spec or conversion"),
        ("{answers}", "missing placeholder {instruction}"),
        ("{instruction}", "missing placeholder {answers}"),
        ("{instruction} {answers} {", "is not a valid format string"),
    ],
)
def test_bad_templates_are_refused_on_load(text: str, message: str) -> None:
    with pytest.raises(PromptTemplateError) as caught:
        PromptTemplate.from_text(text, source="judge.txt")
    assert message in str(caught.value)
    assert "judge.txt" in str(caught.value)


def test_unreadable_template_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PromptTemplateError, match="cannot read prompt template"):
        PromptTemplate.from_file(tmp_path / "missing.txt")
