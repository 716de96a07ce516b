"""Reading a judge's reply into one 1-5 rating and a rationale per answer and aspect.

Judges drift from the requested layout in many small ways (heading levels, bold labels, ``4/5``,
aspect names shortened, answers out of order, the released template's aspect-first layout), so the
markdown reader accepts those; what it refuses (a missing, duplicate, non-numeric or out-of-range
rating) it reports in one message that names the answer, the aspect and what was found, because a
repair prompt quotes that message back to the judge.

A reply is stored before it is parsed and parsed again on every redelivery, so no reply may make the
parser raise anything but ``RatingParseError``: an uncaught error would crash the annotator on the
same stored reply at every restart. Hence the bounds on the reply's size, its JSON nesting and the
digits of an answer number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.annotator.errors import RatingParseError
from services.annotator.rubric import Aspect, ReplyFormat


class AspectRating(BaseModel):
    """One aspect's rating of one answer, as the judge gave it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rating: int = Field(ge=1, le=5, description="1 = worst, 5 = best.")
    rationale: str = Field("", description="The judge's reason; empty when it gave none.")


class ParsedRatings(BaseModel):
    """Ratings per answer (0-based, in the order the answers were listed), per aspect."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    answers: tuple[dict[Aspect, AspectRating], ...]

    def rating(self, answer: int, aspect: Aspect) -> int:
        return self.answers[answer][aspect].rating


# --- markdown ------------------------------------------------------------------------------------

# Runs of spaces and emphasis marks, as one character class: two optional runs side by side would
# backtrack quadratically on a long line of marks, so every pattern keeps runs apart.
_MARKS = r"[\s*_`]*"
_SEPARATOR = r"[:\-–—=]"
_HEADING = re.compile(r"^(#{1,6})\s*(.*)$")
_BULLET = re.compile(r"^(?:[-+•]\s+|\*\s+(?!\*))")
_LIST_MARKER = re.compile(r"^(?:[-+•]\s+|\*\s+(?!\*)|\d{1,2}[.)]\s+)")
_RULE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,}|={3,})$")
_ANSWER_HEADER = re.compile(
    r"^[\s*_`\[<(]*"
    r"(?:(?:output|ratings?|scores?|evaluation|assessment)\s+(?:for|of)\s+)?"
    r"(?:answer|response|output|text|candidate)\s*#?\s*(?P<number>\d{1,9})"
    r"[\s*_`\]>):.\-–—]*$",
    re.IGNORECASE,
)
_ASPECT_NAME = (
    r"(?P<name>helpfulness|helpful|visual\s+faithfulness|visual\s+fidelity|faithfulness|faithful"
    r"|ethical\s+considerations?|ethics|ethical)"
)
_ASPECT_LINE = re.compile(
    rf"^{_MARKS}(?:aspect\s*\d*\s*[:.\-]?\s*)?{_ASPECT_NAME}"
    r"(?:\s+(?:assessment|rating|score|evaluation))?(?:\s*\([^)]*\))?"
    rf"{_MARKS}(?:{_SEPARATOR}{_MARKS}(?P<rest>.*))?$",
    re.IGNORECASE,
)
_RATING_LINE = re.compile(
    rf"^{_MARKS}(?:rating|score){_MARKS}(?:{_SEPARATOR}|(?=\d)){_MARKS}(?P<value>.*)$",
    re.IGNORECASE,
)
_RATIONALE_LABEL = r"(?:rationale|reason(?:ing)?|explanation|justification)"
_RATIONALE_LINE = re.compile(
    rf"^{_MARKS}{_RATIONALE_LABEL}{_MARKS}{_SEPARATOR}{_MARKS}(?P<text>.*)$", re.IGNORECASE
)
_INLINE_RATIONALE = re.compile(rf"\b{_RATIONALE_LABEL}{_MARKS}{_SEPARATOR}", re.IGNORECASE)
_RATING_VALUE = re.compile(
    r"^(?P<number>[-+]?\d+(?:\.\d+)?)\s*(?:(?:/|out\s+of)\s*(?P<scale>\d+(?:\.\d+)?))?", re.IGNORECASE
)
_RANGE_AFTER_VALUE = re.compile(r"^(?:-|–|to\b|or\b)\s*\d")
# Where the judge's reply shows no layout at all, say what the parser looks for.
_EXPECTED_LAYOUT = "expected '## Answer N' sections holding '### <aspect>', 'Rating: N' and 'Rationale: ...'"
# The size of the excerpt of a reply line quoted in an error message.
_QUOTE_CHARS = 60
# Far above any rating reply (about 12 times the default judge max_tokens of 2048, at 4 characters a
# token), and low enough that a runaway reply is refused at once rather than scanned.
MAX_REPLY_CHARS = 100_000
# The accepted JSON layouts nest at most 4 deep ({"answers": [{"Helpfulness": {"rating": 4}}]}).
# Checked before decoding: the json module recurses once per level, so a reply nested 1,000 deep
# raises RecursionError, or overflows the C stack where the recursion limit was raised.
MAX_JSON_DEPTH = 8


def parse_markdown_ratings(reply: str, n_answers: int, aspects: Sequence[Aspect]) -> ParsedRatings:
    """Read ratings from a reply in the markdown layout (answer-first or aspect-first nesting).

    Raises ``RatingParseError`` listing every problem found: ratings missing, duplicated, outside
    1-5 or not numeric, sections for answers that were not shown, or no layout at all.
    """
    _check_request(n_answers, aspects)
    _check_reply_size(reply)
    if not reply.strip():
        raise RatingParseError("the reply is empty")
    reader = _MarkdownReader(n_answers=n_answers, aspects=tuple(aspects))
    for line in reply.splitlines():
        reader.read_line(line)
    return reader.result()


def parse_json_ratings(reply: str, n_answers: int, aspects: Sequence[Aspect]) -> ParsedRatings:
    """Read ratings from a JSON reply, with or without ``` fences or prose around it.

    The reply must hold exactly one rating object (see ``_extract_json`` for why not the first).

    Accepts the ``ratings_json_schema`` layout (``{"answer_1": {"Helpfulness": {"rating": 4,
    "rationale": "..."}}}``), a list of per-answer objects, and the aspect-first nesting.
    """
    _check_request(n_answers, aspects)
    _check_reply_size(reply)
    data = _extract_json(reply)
    collector = _Collector(n_answers=n_answers, aspects=tuple(aspects))
    for number, entry in _json_answer_entries(data, collector):
        if not 1 <= number <= n_answers:
            collector.problems.append(
                f"the reply rates Answer {number}, but only {n_answers} answers were shown"
            )
            continue
        if not isinstance(entry, dict):
            collector.problems.append(
                f"Answer {number}: expected an object of aspects, found {_quote(entry)}"
            )
            continue
        for key, value in entry.items():
            aspect = aspect_from_name(str(key))
            if aspect is None:
                continue
            rating, rationale = _json_rating_and_rationale(value)
            collector.add_rating(number, aspect, rating)
            if rationale:
                collector.rationales[(number, aspect)] = rationale
    return collector.result()


def parse_ratings(
    reply: str, n_answers: int, aspects: Sequence[Aspect], reply_format: ReplyFormat
) -> ParsedRatings:
    """Read a reply in the format its prompt asked for."""
    if reply_format is ReplyFormat.JSON:
        return parse_json_ratings(reply, n_answers, aspects)
    return parse_markdown_ratings(reply, n_answers, aspects)


def parse_vlfeedback_rating(value: str) -> int | None:
    """The published dataset's string rating as an int, or None where it is not a 1-5 rating ("N/A")."""
    try:
        return read_rating(value)
    except ValueError:
        return None


def read_rating(text: str) -> int:
    """A rating written as ``4``, ``4/5``, ``4 out of 5``, ``**4**``, ``4 (Helpful)`` or ``4.0``.

    Raises ``ValueError`` saying what is wrong with it, for the caller to place in context.
    """
    value = text.strip().strip("*_`[]\"' ").strip()
    match = _RATING_VALUE.match(value)
    if match is None:
        raise ValueError(f"rating {_quote(value)} is not a number from 1 to 5")
    if _RANGE_AFTER_VALUE.match(value[match.end() :].strip()):
        raise ValueError(f"rating {_quote(value)} is a range, not one number from 1 to 5")
    scale = match.group("scale")
    if scale is not None and float(scale) != 5:
        raise ValueError(f"rating {_quote(match.group(0))} is not on the 1-5 scale")
    number = float(match.group("number"))
    if not number.is_integer():
        raise ValueError(f"rating {_quote(match.group('number'))} is not a whole number from 1 to 5")
    if not 1 <= number <= 5:
        raise ValueError(f"rating {int(number)} is outside 1-5")
    return int(number)


def aspect_from_name(name: str) -> Aspect | None:
    """The aspect a heading or key names, tolerating case, shortening and a trailing 'Assessment'."""
    match = _ASPECT_LINE.match(" ".join(name.split()))
    if match is None or match.group("rest"):
        return None
    word = match.group("name").lower()
    if word.startswith("help"):
        return Aspect.HELPFULNESS
    if "faith" in word or "fidel" in word:
        return Aspect.VISUAL_FAITHFULNESS
    return Aspect.ETHICAL_CONSIDERATIONS


@dataclass
class _Collector:
    """Ratings and rationales gathered from one reply, checked for completeness at the end."""

    n_answers: int
    aspects: tuple[Aspect, ...]
    ratings: dict[tuple[int, Aspect], int] = field(default_factory=dict)
    rationales: dict[tuple[int, Aspect], str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add_rating(self, number: int, aspect: Aspect, value: object) -> None:
        """Record a rating for Answer ``number`` (1-based); ``value`` is raw text or a JSON value."""
        if aspect not in self.aspects:
            return
        where = f"Answer {number}, {aspect.value}"
        try:
            rating = _rating_from_value(value)
        except ValueError as problem:
            self.problems.append(f"{where}: {problem}")
            return
        previous = self.ratings.get((number, aspect))
        if previous is not None:
            self.problems.append(f"{where}: rated twice ({previous} and {rating})")
            return
        self.ratings[(number, aspect)] = rating

    def result(self) -> ParsedRatings:
        problems = list(self.problems)
        for number in range(1, self.n_answers + 1):
            missing = [
                aspect
                for aspect in self.aspects
                if (number, aspect) not in self.ratings
                and not any(p.startswith(f"Answer {number}, {aspect.value}:") for p in self.problems)
            ]
            if len(missing) == len(self.aspects) > 1:
                problems.append(f"Answer {number}: no ratings found")
            elif missing:
                problems.append(f"Answer {number}: no rating for {', '.join(a.value for a in missing)}")
        if problems:
            if not self.ratings and not self.problems:
                problems = [f"no ratings found in the reply ({_EXPECTED_LAYOUT})"]
            raise RatingParseError("; ".join(dict.fromkeys(problems)))
        return ParsedRatings(
            answers=tuple(
                {
                    aspect: AspectRating(
                        rating=self.ratings[(number, aspect)],
                        rationale=self.rationales.get((number, aspect), ""),
                    )
                    for aspect in self.aspects
                }
                for number in range(1, self.n_answers + 1)
            )
        )


@dataclass
class _Slot:
    """The rationale lines of one (answer, aspect): labelled ones win over loose text after a rating."""

    labelled: list[str] | None = None
    loose: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = self.labelled if self.labelled is not None else self.loose
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


@dataclass
class _MarkdownReader:
    """Walks a reply line by line, tracking which answer and aspect the current line belongs to.

    The first kind of section heading seen (answer or aspect) is the outer one; a repeated outer
    section is a duplicate, while inner sections legitimately repeat under each outer one.
    """

    n_answers: int
    aspects: tuple[Aspect, ...]
    collector: _Collector = field(init=False)
    answer: int | None = None
    aspect: Aspect | None = None
    answer_level: int | None = None
    aspect_level: int | None = None
    outer: str | None = None
    outer_seen: set[object] = field(default_factory=set)
    slots: dict[tuple[int, Aspect], _Slot] = field(default_factory=dict)
    sink: list[str] | None = None

    def __post_init__(self) -> None:
        self.collector = _Collector(n_answers=self.n_answers, aspects=self.aspects)

    def read_line(self, raw: str) -> None:
        # Single spaces keep the patterns' runs of optional whitespace from backtracking on long lines.
        line = " ".join(raw.split())
        if not line:
            if self.sink is not None:
                self.sink.append("")
            return
        level, heading = _heading_level(line)
        core = _LIST_MARKER.sub("", heading, count=1).strip()
        # An answer heading may be a bullet but not a numbered item: "1. Answer 2" ranks, it opens nothing.
        if _RULE.match(line):
            self.sink = None
        elif match := _ANSWER_HEADER.match(_BULLET.sub("", heading, count=1)):
            self._enter_answer(int(match.group("number")), level)
        elif (match := _ASPECT_LINE.match(core)) and (aspect := aspect_from_name(match.group("name"))):
            self._enter_aspect(aspect, level, (match.group("rest") or "").strip(), raw)
        elif match := _RATING_LINE.match(core):
            self._rate(match.group("value"), raw)
        elif match := _RATIONALE_LINE.match(core):
            self._start_rationale(match.group("text"))
        elif level < _PLAIN_LEVEL:
            self._leave_sections(level)
        elif self.sink is not None:
            self.sink.append(line)

    def result(self) -> ParsedRatings:
        for key, slot in self.slots.items():
            if text := slot.text():
                self.collector.rationales[key] = text
        return self.collector.result()

    def _enter_answer(self, number: int, level: int) -> None:
        self.outer = self.outer or "answer"
        if self.outer == "answer":
            self._check_outer_repeat(number, f"Answer {number}")
            self.aspect, self.aspect_level = None, None
        if not 1 <= number <= self.n_answers:
            self.collector.problems.append(
                f"the reply has a section for Answer {number}, but only {self.n_answers} answers were shown"
            )
        self.answer, self.answer_level, self.sink = number, level, None

    def _enter_aspect(self, aspect: Aspect, level: int, rest: str, raw: str) -> None:
        self.outer = self.outer or "aspect"
        if self.outer == "aspect":
            self._check_outer_repeat(aspect, aspect.value)
            self.answer, self.answer_level = None, None
        self.aspect, self.aspect_level, self.sink = aspect, level, None
        if not rest:
            return
        if rating_line := _RATING_LINE.match(rest):
            self._rate(rating_line.group("value"), raw)
        elif _RATING_VALUE.match(rest) or rest.lower().startswith(("n/a", "na ", "none")):
            self._rate(rest, raw)
        elif rationale := _RATIONALE_LINE.match(rest):
            self._start_rationale(rationale.group("text"))

    def _check_outer_repeat(self, key: object, label: str) -> None:
        if key in self.outer_seen:
            self.collector.problems.append(f"duplicate section for {label}")
        self.outer_seen.add(key)

    def _leave_sections(self, level: int) -> None:
        """An unrecognised heading as high as a section's own heading ends that section."""
        if self.answer_level is not None and level <= self.answer_level:
            self.answer, self.answer_level = None, None
        if self.aspect_level is not None and level <= self.aspect_level:
            self.aspect, self.aspect_level = None, None
        self.sink = None

    def _rate(self, value: str, raw: str) -> None:
        value, rationale = _split_inline_rationale(value)
        key = self._current_slot()
        if key is None:
            self._report_unplaced(raw)
            self.sink = None
            return
        number, aspect = key
        if 1 <= number <= self.n_answers:
            self.collector.add_rating(number, aspect, value)
        slot = self.slots.setdefault(key, _Slot())
        self.sink = slot.loose
        if rationale:
            self._start_rationale(rationale)

    def _start_rationale(self, text: str) -> None:
        key = self._current_slot()
        if key is None:
            self.sink = None
            return
        slot = self.slots.setdefault(key, _Slot())
        if slot.labelled is None:
            slot.labelled = []
        slot.labelled.append(text.strip().rstrip("*_").strip())
        self.sink = slot.labelled

    def _current_slot(self) -> tuple[int, Aspect] | None:
        """The (answer number, aspect) the current line belongs to; a lone answer or aspect is implied."""
        number, aspect = self.answer, self.aspect
        if number is None and self.n_answers == 1:
            number = 1
        if aspect is None and len(self.aspects) == 1:
            aspect = self.aspects[0]
        if number is None or aspect is None:
            return None
        return number, aspect

    def _report_unplaced(self, raw: str) -> None:
        line = _quote(raw.strip())
        if self.answer is None and self.n_answers > 1:
            self.collector.problems.append(f"found {line} outside any answer section")
        else:
            number = self.answer or 1
            self.collector.problems.append(f"Answer {number}: found {line} outside any aspect section")


# A line that is not a '#' heading ranks below every real heading level.
_PLAIN_LEVEL = 7


def _heading_level(line: str) -> tuple[int, str]:
    match = _HEADING.match(line)
    if match is None:
        return _PLAIN_LEVEL, line
    return len(match.group(1)), match.group(2).strip()


def _split_inline_rationale(value: str) -> tuple[str, str]:
    """``4. Rationale: clear`` -> (``4.``, ``clear``); the rationale is empty when absent."""
    match = _INLINE_RATIONALE.search(value)
    if match is None:
        return value, ""
    return value[: match.start()], value[match.end() :].strip()


# --- JSON ----------------------------------------------------------------------------------------

_JSON_ANSWER_KEY = re.compile(r"^(?:answer|response|output|text)?[\s_#-]*(\d{1,9})$", re.IGNORECASE)
_JSON_LIST_KEYS = ("answers", "ratings", "responses", "results", "evaluations")
_JSON_RATING_KEYS = ("rating", "score")
_JSON_RATIONALE_KEYS = ("rationale", "reason", "reasoning", "explanation", "justification")
_JSON_OPENING = re.compile(r"[{\[]")
# One JSON token, as the json module reads it (strict: no control characters inside a string);
# only brackets change the depth.
_JSON_TOKEN = re.compile(
    r'\s*(?:"(?:[^"\\\x00-\x1f]|\\.)*"|-?\d[\d.eE+-]*|true|false|null|NaN|-?Infinity|[,:]'
    r"|(?P<open>[{\[])|(?P<close>[}\]]))"
)
_DECODER = json.JSONDecoder()


def _extract_json(reply: str) -> Any:
    """The reply's one JSON rating object (an object, or a list of objects), fenced or not.

    Exactly one, not the first or the last: an answer under judgement can hold a forged rating
    block, and a judge that quotes it, before its own verdict or after it, would hand the forged
    ratings in under either rule. With two blocks the parser cannot tell which one is the judge's,
    so it refuses them as a parse error and the repair turn asks for one object and nothing else
    (the markdown reader refuses a repeated answer section the same way). Blocks are found by
    decoding the reply itself, so a forged block counts whether it is fenced or not, while one
    quoted inside the judge's own JSON (in a rationale string) is part of that object, not a block.
    """
    blocks = []
    position = 0
    while (opening := _JSON_OPENING.search(reply, position)) is not None:
        decoded = _decode_at(reply, opening.start())
        if decoded is None:
            position = opening.start() + 1
            continue
        data, position = decoded
        if _is_rating_object(data):
            blocks.append(data)
    if not blocks:
        raise RatingParseError(f"no JSON object found in the reply (starts with {_quote(reply.strip())})")
    if len(blocks) > 1:
        raise RatingParseError(
            f"the reply holds {len(blocks)} JSON rating objects; expected exactly one, with nothing else"
        )
    return blocks[0]


def _is_rating_object(data: Any) -> bool:
    """An object, or a list of objects: not a citation like ``[1]`` in the judge's prose."""
    if isinstance(data, list):
        return bool(data) and all(isinstance(item, dict) for item in data)
    return isinstance(data, dict) and bool(data)


def _decode_at(reply: str, start: int) -> tuple[Any, int] | None:
    """The JSON value opening at ``start`` and where it ends, or None where none does."""
    if not _json_value_closes(reply, start):
        return None
    try:
        return _DECODER.raw_decode(reply, start)
    except ValueError:  # not JSON after all, or an integer past Python's digit limit
        return None


def _json_value_closes(reply: str, start: int) -> bool:
    """Whether the JSON value opening at ``start`` closes; refuses the reply where it nests deeper
    than ``MAX_JSON_DEPTH``.

    Walks the tokens the decoder would read and stops where it would stop, so it costs no more than
    the decoding it guards; a value that does not close is not decoded at all, as the decoder's
    error on it would scan the reply up to there, once for every bracket of the reply.
    """
    depth = 0
    position = start
    while (token := _JSON_TOKEN.match(reply, position)) is not None:
        position = token.end()
        if token.group("open"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise RatingParseError(f"the reply's JSON nests deeper than {MAX_JSON_DEPTH} levels")
        elif token.group("close"):
            depth -= 1
            if depth == 0:
                return True
    return False


def _json_answer_entries(data: Any, collector: _Collector) -> list[tuple[int, Any]]:
    """(1-based answer number, that answer's object) pairs from any of the accepted nestings."""
    if isinstance(data, dict):
        lists = [value for key, value in data.items() if str(key).lower() in _JSON_LIST_KEYS]
        if len(lists) == 1 and isinstance(lists[0], list):
            data = lists[0]
    if isinstance(data, list):
        return list(enumerate(data, start=1))
    if not isinstance(data, dict):
        raise RatingParseError(f"expected a JSON object of answers, found {_quote(data)}")
    aspect_keys = {key: aspect_from_name(str(key)) for key in data}
    if all(aspect_keys.values()):
        return _transpose_aspect_first({aspect_keys[key]: value for key, value in data.items()}, collector)
    entries: list[tuple[int, Any]] = []
    seen: set[int] = set()
    for key, value in data.items():
        match = _JSON_ANSWER_KEY.match(str(key).strip())
        if match is None:
            collector.problems.append(f"unexpected key {_quote(key)} in the reply's JSON object")
            continue
        number = int(match.group(1))
        if number in seen:
            collector.problems.append(f"duplicate entries for Answer {number}")
            continue
        seen.add(number)
        entries.append((number, value))
    return entries


def _transpose_aspect_first(by_aspect: dict[Aspect, Any], collector: _Collector) -> list[tuple[int, Any]]:
    per_answer: dict[int, dict[str, Any]] = {}
    for aspect, answers in by_aspect.items():
        if isinstance(answers, list):
            items = [(str(number), value) for number, value in enumerate(answers, start=1)]
        elif isinstance(answers, dict):
            items = [(str(key), value) for key, value in answers.items()]
        else:
            collector.problems.append(f"{aspect.value}: expected answers, found {_quote(answers)}")
            continue
        for key, value in items:
            match = _JSON_ANSWER_KEY.match(key.strip())
            if match is None:
                collector.problems.append(f"{aspect.value}: unexpected key {_quote(key)}")
                continue
            per_answer.setdefault(int(match.group(1)), {})[aspect.value] = value
    return sorted(per_answer.items())


def _json_rating_and_rationale(value: Any) -> tuple[Any, str]:
    if not isinstance(value, dict):
        return value, ""
    lowered = {str(key).lower(): item for key, item in value.items()}
    rating = next((lowered[key] for key in _JSON_RATING_KEYS if key in lowered), None)
    rationale = next((lowered[key] for key in _JSON_RATIONALE_KEYS if key in lowered), "")
    return rating, str(rationale).strip() if rationale is not None else ""


def _rating_from_value(value: object) -> int:
    if value is None:
        raise ValueError("no rating given")
    if isinstance(value, bool | dict | list):
        raise ValueError(f"rating {_quote(value)} is not a number from 1 to 5")
    return read_rating(str(value))


# --- shared --------------------------------------------------------------------------------------


def _check_reply_size(reply: str) -> None:
    if len(reply) > MAX_REPLY_CHARS:
        raise RatingParseError(
            f"the reply is {len(reply)} characters long, more than the {MAX_REPLY_CHARS} a rating reply needs"
        )


def _check_request(n_answers: int, aspects: Sequence[Aspect]) -> None:
    if n_answers < 1:
        raise ValueError(f"need at least one answer, got {n_answers}")
    if not aspects or len(set(aspects)) != len(aspects):
        raise ValueError(f"need distinct aspects, got {list(aspects)}")


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > _QUOTE_CHARS:
        text = text[: _QUOTE_CHARS - 3] + "..."
    return repr(text)
