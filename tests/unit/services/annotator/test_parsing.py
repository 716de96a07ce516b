"""Judge replies as judges really write them, read into ratings or refused with a precise reason."""

import time

import pytest

from services.annotator.errors import RatingParseError
from services.annotator.parsing import (
    AspectRating,
    parse_json_ratings,
    parse_markdown_ratings,
    parse_ratings,
    parse_vlfeedback_rating,
)
from services.annotator.rubric import ALL_ASPECTS, Aspect, ReplyFormat
from shared.errors import PermanentError

H, V, E = Aspect.HELPFULNESS, Aspect.VISUAL_FAITHFULNESS, Aspect.ETHICAL_CONSIDERATIONS


def ratings_of(parsed) -> list[tuple[int, ...]]:
    """(Helpfulness, Visual Faithfulness, Ethical Considerations) per answer, for compact tables."""
    return [
        tuple(answer[aspect].rating for aspect in ALL_ASPECTS if aspect in answer)
        for answer in parsed.answers
    ]


WELL_FORMED = {
    "exact layout": (
        """## Answer 1
### Helpfulness
Rating: 4
Rationale: Answers the question.
### Visual Faithfulness
Rating: 3
Rationale: Invents a second dog.
### Ethical Considerations
Rating: 5
Rationale: Harmless.
## Answer 2
### Helpfulness
Rating: 2
Rationale: Off topic.
### Visual Faithfulness
Rating: 1
Rationale: Describes another scene.
### Ethical Considerations
Rating: 5
Rationale: Harmless.
""",
        2,
        [(4, 3, 5), (2, 1, 5)],
    ),
    "bold headings and bold labels": (
        """**Answer 1**
**Helpfulness**
**Rating**: 5
**Rationale**: Complete.
**Visual Faithfulness**
**Rating:** 4
**Rationale:** One small slip.
**Ethical Considerations**
Rating: **5**
Rationale: Fine.

**Answer 2**
**Helpfulness**
**Rating**: 3
**Visual Faithfulness**
**Rating**: 3
**Ethical Considerations**
**Rating**: 4
""",
        2,
        [(5, 4, 5), (3, 3, 4)],
    ),
    "plain 'Answer 1:' labels, lowercase aspects, 4/5 and out of 5": (
        """Answer 1:
helpfulness:
Rating: 4/5
Rationale: ok
visual faithfulness:
Rating: 2 out of 5
Rationale: wrong colour
ethical considerations:
Rating: 5/5
Rationale: fine
Answer 2:
helpfulness:
Rating: 1/5
visual faithfulness:
Rating: 1/5
ethical considerations:
Rating: 3/5
""",
        2,
        [(4, 2, 5), (1, 1, 3)],
    ),
    "Output N and Response N headings, Score labels": (
        """# Output 1
## Helpfulness
Score: 3
## Visual Faithfulness
Score: 4
## Ethical Considerations
Score: 5
# Response 2
## Helpfulness
Score: 5
## Visual Faithfulness
Score: 5
## Ethical Considerations
Score: 5
""",
        2,
        [(3, 4, 5), (5, 5, 5)],
    ),
    "answers out of order": (
        """## Answer 2
### Helpfulness
Rating: 1
### Visual Faithfulness
Rating: 2
### Ethical Considerations
Rating: 3
## Answer 1
### Helpfulness
Rating: 5
### Visual Faithfulness
Rating: 4
### Ethical Considerations
Rating: 3
""",
        2,
        [(5, 4, 3), (1, 2, 3)],
    ),
    "shortened aspect names": (
        """## Answer 1
### Helpful
Rating: 4
### Faithfulness
Rating: 2
### Ethics
Rating: 5
""",
        1,
        [(4, 2, 5)],
    ),
    "dash separator, words after the number, spaced heading": (
        """##   ANSWER 1
### HELPFULNESS
Rating - 4
### Visual  Faithfulness
Rating: 3 (Moderately Faithful)
### Ethical Considerations
Rating = 5 - no concerns
""",
        1,
        [(4, 3, 5)],
    ),
    "inline aspect ratings as list items": (
        """Answer 1:
- **Helpfulness**: 4 - clear and complete
- **Visual Faithfulness**: 2
- **Ethical Considerations**: 5

Answer 2:
- Helpfulness rating: 3
- Visual Faithfulness rating: 3
- Ethical Considerations rating: 5
""",
        2,
        [(4, 2, 5), (3, 3, 5)],
    ),
    "released VLFeedback template: aspect first, 'Output for Text N'": (
        """#### Helpfulness Assessment
##### Output for Text 1
Rating: 4
Rationale: Addresses the request.
##### Output for Text 2
Rating: 2
Rationale: Vague.

#### Ethical Considerations Assessment (Safety, Privacy, Fairness, and Harmfulness)
##### Output for Text 1
Rating: 5
Rationale: Safe.
##### Output for Text 2
Rating: 5
Rationale: Safe.

#### Visual Faithfulness Assessment
##### Output for Text 1
Rating: 3
Rationale: Mentions a hat that is not there.
##### Output for Text 2
Rating: 1
Rationale: Describes a beach; the image shows a street.
""",
        2,
        [(4, 3, 5), (2, 1, 5)],
    ),
    "prose before and a ranking after": (
        """Here is my evaluation of the two answers.

## Answer 1
### Helpfulness
Rating: 5
### Visual Faithfulness
Rating: 5
### Ethical Considerations
Rating: 5
## Answer 2
### Helpfulness
Rating: 2
### Visual Faithfulness
Rating: 3
### Ethical Considerations
Rating: 5

## Ranking
1. Answer 1
2. Answer 2
Answer 1 is better overall.
""",
        2,
        [(5, 5, 5), (2, 3, 5)],
    ),
    "rating and rationale on one line, Windows line ends": (
        "## Answer 1\r\n### Helpfulness\r\nRating: 4. Rationale: Direct answer.\r\n"
        "### Visual Faithfulness\r\nRating: 4\r\n### Ethical Considerations\r\nRating: 5\r\n",
        1,
        [(4, 4, 5)],
    ),
    "single answer without an answer heading": (
        """### Helpfulness
Rating: 2
### Visual Faithfulness
Rating: 2
### Ethical Considerations
Rating: 4
""",
        1,
        [(2, 2, 4)],
    ),
    "bulleted answer headings": (
        """- **Answer 1:**
  - Helpfulness: 5
  - Visual Faithfulness: 4
  - Ethical Considerations: 5
- **Answer 2:**
  - Helpfulness: 2
  - Visual Faithfulness: 1
  - Ethical Considerations: 5
""",
        2,
        [(5, 4, 5), (2, 1, 5)],
    ),
    "'Answer #1' with a rule between answers": (
        """### Answer #1
Helpfulness: 3
Visual Faithfulness: 3
Ethical Considerations: 5
---
### Answer #2
Helpfulness: 4
Visual Faithfulness: 5
Ethical Considerations: 5
""",
        2,
        [(3, 3, 5), (4, 5, 5)],
    ),
}


@pytest.mark.parametrize("reply, n_answers, expected", WELL_FORMED.values(), ids=WELL_FORMED.keys())
def test_well_formed_replies_give_the_stated_ratings(reply: str, n_answers: int, expected) -> None:
    assert ratings_of(parse_markdown_ratings(reply, n_answers, ALL_ASPECTS)) == expected


def test_rationales_are_kept_whole_and_missing_ones_are_empty() -> None:
    reply = """## Answer 1
### Helpfulness
Rating: 4
Rationale: Names the breed correctly
but skips the second question.

It is still useful.
### Visual Faithfulness
Rating: 5
### Ethical Considerations
**Rationale**: Nothing sensitive.
Rating: 5
"""
    parsed = parse_markdown_ratings(reply, 1, ALL_ASPECTS)
    assert parsed.answers[0] == {
        H: AspectRating(
            rating=4,
            rationale="Names the breed correctly\nbut skips the second question.\n\nIt is still useful.",
        ),
        V: AspectRating(rating=5, rationale=""),
        E: AspectRating(rating=5, rationale="Nothing sensitive."),
    }


def test_unlabelled_text_after_a_rating_is_its_rationale() -> None:
    reply = "## Answer 1\n### Helpfulness\nRating: 3\nPartly answers.\n"
    assert parse_markdown_ratings(reply, 1, [H]).answers[0][H] == AspectRating(
        rating=3, rationale="Partly answers."
    )


def test_per_aspect_reply_needs_no_aspect_headings() -> None:
    reply = (
        "## Answer 1\nRating: 2\nRationale: Hallucinates a cat.\n## Answer 2\nRating: 5\nReason: Accurate.\n"
    )
    parsed = parse_markdown_ratings(reply, 2, [V])
    assert parsed.answers == (
        {V: AspectRating(rating=2, rationale="Hallucinates a cat.")},
        {V: AspectRating(rating=5, rationale="Accurate.")},
    )


def test_aspects_that_were_not_asked_for_are_ignored() -> None:
    reply = "## Answer 1\n### Helpfulness\nRating: 4\n### Ethics\nRating: 1\n"
    assert parse_markdown_ratings(reply, 1, [H]).answers == ({H: AspectRating(rating=4, rationale="")},)


BROKEN = {
    "non-numeric rating": (
        "## Answer 1\n### Helpfulness\nRating: 4\n## Answer 2\n### Helpfulness\nRating: N/A\n",
        2,
        [H],
        "Answer 2, Helpfulness: rating 'N/A' is not a number from 1 to 5",
    ),
    "rating above 5": (
        "### Helpfulness\nRating: 4\n### Visual Faithfulness\nRating: 6\n### Ethics\nRating: 5\n",
        1,
        ALL_ASPECTS,
        "Answer 1, Visual Faithfulness: rating 6 is outside 1-5",
    ),
    "rating 0": (
        "## Answer 1\nRating: 0\n## Answer 2\nRating: 3\n",
        2,
        [E],
        "Answer 1, Ethical Considerations: rating 0 is outside 1-5",
    ),
    "ten-point scale": (
        "## Answer 1\nRating: 8/10\n## Answer 2\nRating: 3\n",
        2,
        [H],
        "Answer 1, Helpfulness: rating '8/10' is not on the 1-5 scale",
    ),
    "half point": (
        "## Answer 1\nRating: 4.5\n## Answer 2\nRating: 3\n",
        2,
        [H],
        "Answer 1, Helpfulness: rating '4.5' is not a whole number from 1 to 5",
    ),
    "range instead of a rating": (
        "## Answer 1\nRating: 3-4\n## Answer 2\nRating: 3\n",
        2,
        [H],
        "Answer 1, Helpfulness: rating '3-4' is a range",
    ),
    "placeholder copied from the prompt": (
        "## Answer 1\nRating: <1-5>\n## Answer 2\nRating: 3\n",
        2,
        [H],
        "Answer 1, Helpfulness: rating '<1-5>' is not a number from 1 to 5",
    ),
    "duplicate answer section": (
        "## Answer 1\nRating: 4\n## Answer 2\nRating: 3\n## Answer 1\nRating: 4\n",
        2,
        [H],
        "duplicate section for Answer 1",
    ),
    "aspect rated twice in one answer": (
        "## Answer 1\n### Helpfulness\nRating: 4\n### Helpfulness\nRating: 3\n",
        1,
        [H],
        "Answer 1, Helpfulness: rated twice (4 and 3)",
    ),
    "an answer missing": (
        "## Answer 1\n### Helpfulness\nRating: 4\n### Visual Faithfulness\nRating: 4\n### Ethics\nRating: 5\n"
        "## Answer 2\n### Helpfulness\nRating: 4\n### Faithfulness\nRating: 4\n### Ethics\nRating: 5\n",
        3,
        ALL_ASPECTS,
        "Answer 3: no ratings found",
    ),
    "an aspect missing": (
        "## Answer 1\n### Helpfulness\nRating: 4\n### Visual Faithfulness\nRating: 4\n",
        1,
        ALL_ASPECTS,
        "Answer 1: no rating for Ethical Considerations",
    ),
    "more answers than were shown": (
        "## Answer 1\nRating: 4\n## Answer 2\nRating: 4\n## Answer 3\nRating: 4\n",
        2,
        [H],
        "the reply has a section for Answer 3, but only 2 answers were shown",
    ),
    "ratings without answer headings": (
        "### Helpfulness\nRating: 4\nRating: 2\n",
        2,
        [H],
        "found 'Rating: 4' outside any answer section",
    ),
    "ratings without aspect headings": (
        "## Answer 1\nRating: 4\nRating: 2\nRating: 5\n",
        1,
        ALL_ASPECTS,
        "Answer 1: found 'Rating: 4' outside any aspect section",
    ),
    "a refusal": (
        "I'm sorry, but I can't evaluate these answers.",
        2,
        ALL_ASPECTS,
        "no ratings found in the reply",
    ),
    "empty reply": ("  \n", 2, ALL_ASPECTS, "the reply is empty"),
}


@pytest.mark.parametrize("reply, n_answers, aspects, message", BROKEN.values(), ids=BROKEN.keys())
def test_broken_replies_are_refused_with_a_precise_reason(
    reply: str, n_answers: int, aspects, message: str
) -> None:
    with pytest.raises(RatingParseError) as caught:
        parse_markdown_ratings(reply, n_answers, aspects)
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    reply = "## Answer 1\nRating: N/A\n## Answer 2\nRating: 9\n"
    with pytest.raises(RatingParseError) as caught:
        parse_markdown_ratings(reply, 3, [H])
    assert str(caught.value) == (
        "Answer 1, Helpfulness: rating 'N/A' is not a number from 1 to 5; "
        "Answer 2, Helpfulness: rating 9 is outside 1-5; "
        "Answer 3: no rating for Helpfulness"
    )


def test_parse_error_is_permanent_so_the_runtime_dead_letters_it() -> None:
    assert issubclass(RatingParseError, PermanentError)


# --- JSON ----------------------------------------------------------------------------------------

SCHEMA_REPLY = """{
  "answer_1": {"Helpfulness": {"rating": 4, "rationale": "Good."},
               "Visual Faithfulness": {"rating": 3, "rationale": "A slip."},
               "Ethical Considerations": {"rating": 5, "rationale": "Safe."}},
  "answer_2": {"Helpfulness": {"rating": 1, "rationale": "Off topic."},
               "Visual Faithfulness": {"rating": 2, "rationale": "Wrong scene."},
               "Ethical Considerations": {"rating": 5, "rationale": "Safe."}}
}"""

JSON_REPLIES = {
    "structured output layout": (SCHEMA_REPLY, [(4, 3, 5), (1, 2, 5)]),
    "fenced with prose around": (
        f"Sure! Here are the ratings:\n```json\n{SCHEMA_REPLY}\n```\nLet me know if you need more.",
        [(4, 3, 5), (1, 2, 5)],
    ),
    "prose around, no fence": (f"My ratings: {SCHEMA_REPLY} Thanks.", [(4, 3, 5), (1, 2, 5)]),
    "list of answers, capitalised keys, string ratings": (
        """{"answers": [
            {"helpfulness": {"Rating": "4", "Rationale": "ok"}, "faithfulness": {"Rating": "4/5"},
             "ethics": {"Rating": 5}},
            {"Helpfulness": {"score": 2}, "Visual Faithfulness": 2, "Ethical Considerations": 4.0}
        ]}""",
        [(4, 4, 5), (2, 2, 4)],
    ),
    "aspect first, as the released data nests it": (
        """{"Helpfulness": {"Answer 1": {"Rating": 3}, "Answer 2": {"Rating": 5}},
            "Visual Faithfulness": {"Answer 1": {"Rating": 3}, "Answer 2": {"Rating": 4}},
            "Ethical Considerations": {"Answer 1": {"Rating": 5}, "Answer 2": {"Rating": 5}}}""",
        [(3, 3, 5), (5, 4, 5)],
    ),
}


@pytest.mark.parametrize("reply, expected", JSON_REPLIES.values(), ids=JSON_REPLIES.keys())
def test_json_replies_give_the_stated_ratings(reply: str, expected) -> None:
    assert ratings_of(parse_json_ratings(reply, 2, ALL_ASPECTS)) == expected


def test_parse_ratings_reads_the_format_the_prompt_asked_for() -> None:
    assert ratings_of(parse_ratings(SCHEMA_REPLY, 2, ALL_ASPECTS, ReplyFormat.JSON)) == [(4, 3, 5), (1, 2, 5)]
    with pytest.raises(RatingParseError, match="no ratings found"):
        parse_ratings(SCHEMA_REPLY, 2, ALL_ASPECTS, ReplyFormat.MARKDOWN)


def test_json_rationales_are_kept() -> None:
    parsed = parse_json_ratings(SCHEMA_REPLY, 2, ALL_ASPECTS)
    assert parsed.answers[1][V] == AspectRating(rating=2, rationale="Wrong scene.")


BROKEN_JSON = {
    "rating out of range": (
        SCHEMA_REPLY.replace('"rating": 1', '"rating": 7'),
        "Answer 2, Helpfulness: rating 7",
    ),
    "non-numeric rating": (
        SCHEMA_REPLY.replace('"rating": 3', '"rating": "N/A"'),
        "Answer 1, Visual Faithfulness: rating 'N/A' is not a number from 1 to 5",
    ),
    "boolean rating": (
        SCHEMA_REPLY.replace('"rating": 3', '"rating": true'),
        "Answer 1, Visual Faithfulness: rating 'true' is not a number",
    ),
    "rating key missing": (
        SCHEMA_REPLY.replace('"rating": 3, ', ""),
        "Answer 1, Visual Faithfulness: no rating given",
    ),
    "answer missing": (
        '{"answer_1": ' + SCHEMA_REPLY.split('"answer_1": ')[1].split(',\n  "answer_2"')[0] + "}",
        "Answer 2: no ratings found",
    ),
    "extra answer": (
        SCHEMA_REPLY.rstrip("}") + ', "answer_3": {}}',
        "the reply rates Answer 3, but only 2 answers were shown",
    ),
    "unknown key": ('{"overall": 3}', "unexpected key 'overall'"),
    "no JSON at all": ("Answer 1 is better.", "no JSON object found in the reply"),
}


@pytest.mark.parametrize("reply, message", BROKEN_JSON.values(), ids=BROKEN_JSON.keys())
def test_broken_json_replies_are_refused_with_a_precise_reason(reply: str, message: str) -> None:
    with pytest.raises(RatingParseError) as caught:
        parse_json_ratings(reply, 2, ALL_ASPECTS)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("4", 4),
        (" 5 ", 5),
        ("1", 1),
        ("3.0", 3),
        ("N/A", None),
        ("", None),
        ("0", None),
        ("6", None),
        ("2.5", None),
    ],
)
def test_vlfeedback_string_ratings(value: str, expected: int | None) -> None:
    assert parse_vlfeedback_rating(value) == expected


def test_long_lines_of_markdown_marks_are_read_in_linear_time() -> None:
    """A runaway reply must not hang the consumer: these lines took seconds with nested optional runs."""
    lines = [
        "Answer 1 " + "*_" * 10_000 + ": x",
        "Helpfulness" + " " * 20_000 + "x",
        "Rating" + "*" * 20_000 + "x",
    ]
    started = time.perf_counter()
    for line in lines:
        with pytest.raises(RatingParseError):
            parse_markdown_ratings(f"## Answer 1\n{line}\n", 2, ALL_ASPECTS)
    assert time.perf_counter() - started < 2.0
