"""Checking a short answer against a known reference answer, by rule.

Used by the annotator's verifiable judge (ratings without a model) and the evaluator's greedy
accuracy and MME scoring, so an answer reads the same way wherever it is checked. The
rules are deliberately conservative: an answer that hedges ("red or blue") or only mentions the
reference among other things does not match, because a false match would turn a wrong answer into
a chosen one.

Matching rules, applied after ``normalise_answer`` (case, surrounding punctuation and whitespace
ignored; a leading article dropped for words):

- yes/no: MME's official rule on the lowercased, stripped answer: exactly "yes"/"no" is that;
  otherwise only the first 4 characters count: containing "yes" -> yes, else "no" -> no, else
  "other" (never a match).
- number: digits ("3", "3.0", "1,000") and number words ("three", "twenty-one", "one hundred")
  compare as numbers. Match when the final-answer phrase (below) is that number, or when the answer
  mentions exactly one distinct number and it is that number ("There are three dogs.").
- option: the answer's chosen letter ("B", "(B)", "B.", "b) red", "Option B", "The answer is B")
  equals the reference letter. Only letters A-H count as options.
- word: the whole answer or its first sentence is the word ("Red."), or the word is followed by
  an explanation ("Red, because ..."), or the final-answer phrase is the word ("The answer is
  red.", "The car is red."). The final-answer phrase is what follows the last "is/are/was/were"
  or ":" of the first or the last sentence.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

AnswerKind = Literal["yes_no", "number", "option", "word"]
YesNo = Literal["yes", "no", "other"]


@dataclass(frozen=True)
class MatchResult:
    matched: bool
    kind: AnswerKind
    detail: str


_SURROUNDING = string.punctuation + string.whitespace + "“”‘’«»…–—"
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_WORD = re.compile(r"[^\W_][\w'\-]*")
_OPTION = re.compile(
    r"^(?:(?:the\s+)?(?:correct\s+|right\s+|best\s+)?(?:option|choice|answer)(?:\s+is)?\s*:?\s*)?"
    r"\(?([a-h])(?:\)|\.|:|\s*$|\s+-\s)"
)
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
_COPULA = re.compile(r"\b(?:is|are|was|were)\s+|'s\s+|:\s*")
_EXPLANATION_AFTER_COMMA = re.compile(r"^,\s*(?:because|since|as|it|this|which|that)\b")
_DIGITS = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# Inside a sentence a sign is read as an operator or a range ("2-3"), so numbers there are unsigned.
_DIGITS_IN_TEXT = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d,])")
_UNIT_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
)
_TEN_WORDS = "twenty thirty forty fifty sixty seventy eighty ninety"
_UNITS = {word: value for value, word in enumerate(_UNIT_WORDS.split(" "))}
_TENS = {word: value * 10 for value, word in enumerate(_TEN_WORDS.split(" "), start=2)}
_SCALES = {"hundred": 100, "thousand": 1000}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_SCALES)


def normalise_answer(text: str) -> str:
    """Lowercase, NFKC, single spaces, and no punctuation or whitespace around the answer."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return " ".join(folded.split()).strip(_SURROUNDING)


def reference_kind(reference: str) -> AnswerKind | None:
    """The kind of a short verifiable reference, or None when it cannot be checked by rule."""
    normalised = normalise_answer(reference)
    if normalised in ("yes", "no"):
        return "yes_no"
    if parse_number(normalised) is not None:
        return "number"
    if _option_letter(normalised) is not None and len(normalised) <= len("option x"):
        return "option"
    if _WORD.fullmatch(_drop_article(normalised)):
        return "word"
    return None


def match_reference(answer: str, reference: str) -> MatchResult:
    """Whether ``answer`` gives the reference answer, by the rules in the module docstring.

    Raises ``ValueError`` for a reference that ``reference_kind`` does not accept.
    """
    kind = reference_kind(reference)
    if kind is None:
        raise ValueError(f"reference {reference!r} is not a short verifiable answer")
    if not normalise_answer(answer):
        return MatchResult(matched=False, kind=kind, detail="the answer is empty")
    if kind == "yes_no":
        return _match_yes_no(answer, normalise_answer(reference))
    if kind == "number":
        return _match_number(answer, reference)
    if kind == "option":
        return _match_option(answer, reference)
    return _match_word(answer, reference)


def mme_yes_no(prediction: str) -> YesNo:
    """MME's official rule: exactly "yes"/"no", else "yes" or "no" inside the first 4 characters.

    Nothing is stripped, as in the official tool: " yes" is yes but "  yes" is other.
    """
    text = prediction.lower()
    if text in ("yes", "no"):
        return "yes" if text == "yes" else "no"
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def parse_number(text: str) -> Decimal | None:
    """``text`` as a number when it is one: "3", "3.0", "1,000", "three", "twenty-one"."""
    normalised = normalise_answer(text)
    if _DIGITS.fullmatch(normalised):
        try:
            return Decimal(normalised.replace(",", ""))
        except InvalidOperation:
            return None
    value = _words_to_number(normalised.replace("-", " ").split())
    return Decimal(value) if value is not None else None


def _match_yes_no(answer: str, reference: str) -> MatchResult:
    read = mme_yes_no(answer.strip())
    return MatchResult(
        matched=read == reference,
        kind="yes_no",
        detail=f"the answer reads as {read!r} by MME's rule, the reference is {reference!r}",
    )


def _match_number(answer: str, reference: str) -> MatchResult:
    expected = parse_number(reference)
    final = [number for phrase in _final_phrases(answer) if (number := parse_number(phrase)) is not None]
    if expected in final:
        return MatchResult(True, "number", f"the answer's final phrase gives {_show(expected)}")
    mentioned = sorted(set(_numbers_in(answer)))
    if len(mentioned) == 1 and mentioned[0] == expected:
        return MatchResult(True, "number", f"the answer gives {_show(expected)}")
    found = ", ".join(_show(n) for n in mentioned) if mentioned else "no number"
    return MatchResult(False, "number", f"the answer mentions {found}; the reference is {_show(expected)}")


def _match_option(answer: str, reference: str) -> MatchResult:
    expected = _option_letter(normalise_answer(reference))
    chosen = _option_letter(normalise_answer(answer))
    if chosen is None:
        chosen = next(
            (letter for phrase in _final_phrases(answer) if (letter := _option_letter(phrase)) is not None),
            None,
        )
    shown = f"option {chosen.upper()}" if chosen else "no option letter"
    return MatchResult(
        matched=chosen == expected,
        kind="option",
        detail=f"the answer gives {shown}, the reference is option {str(expected).upper()}",
    )


def _match_word(answer: str, reference: str) -> MatchResult:
    expected = _drop_article(normalise_answer(reference))
    normalised = normalise_answer(answer)
    first_sentence = _drop_article(normalise_answer(_sentences(answer)[0]))
    if expected in (_drop_article(normalised), first_sentence):
        return MatchResult(True, "word", f"the answer is {expected!r}")
    after_word = first_sentence.removeprefix(expected)
    if after_word != first_sentence and _EXPLANATION_AFTER_COMMA.match(after_word):
        return MatchResult(True, "word", f"the answer starts with {expected!r} and explains it")
    if expected in (_drop_article(phrase) for phrase in _final_phrases(answer)):
        return MatchResult(True, "word", f"the answer's final phrase is {expected!r}")
    return MatchResult(False, "word", f"the answer does not give {expected!r} as its answer")


def _sentences(text: str) -> list[str]:
    parts = [part for part in _SENTENCE_END.split(text.strip()) if part.strip()]
    return parts or [""]


def _final_phrases(answer: str) -> list[str]:
    """What follows the last "is/are/was/were", "'s" or ":" of the first and of the last sentence."""
    sentences = _sentences(answer)
    phrases = []
    for sentence in dict.fromkeys((sentences[0], sentences[-1])):
        normalised = normalise_answer(sentence)
        copulas = list(_COPULA.finditer(normalised))
        if copulas:
            phrases.append(normalise_answer(normalised[copulas[-1].end() :]))
    return phrases


def _option_letter(normalised: str) -> str | None:
    match = _OPTION.match(normalised)
    return match.group(1) if match else None


def _drop_article(text: str) -> str:
    return _ARTICLE.sub("", text, count=1)


def _numbers_in(text: str) -> list[Decimal]:
    """Every number in the text: digit strings, and runs of number words read as one number."""
    normalised = normalise_answer(text)
    numbers = [Decimal(match.group(0).replace(",", "")) for match in _DIGITS_IN_TEXT.finditer(normalised)]
    run: list[str] = []
    for token in [*re.findall(r"[a-z]+", normalised.replace("-", " ")), ""]:
        if token in _NUMBER_WORDS or (token == "and" and run):
            run.append(token)
            continue
        while run and run[-1] == "and":
            run.pop()
        if run and (value := _words_to_number(run)) is not None:
            numbers.append(Decimal(value))
        run = []
    return numbers


def _words_to_number(tokens: list[str]) -> int | None:
    """English number words up to the thousands ("one hundred and five"); None if not all are."""
    if not tokens:
        return None
    total, current = 0, 0
    for token in tokens:
        if token in _UNITS:
            current += _UNITS[token]
        elif token in _TENS:
            current += _TENS[token]
        elif token == "hundred":
            current = (current or 1) * _SCALES[token]
        elif token == "thousand":
            total, current = total + (current or 1) * _SCALES[token], 0
        elif token != "and":
            return None
    return total + current


def _show(number: Decimal | None) -> str:
    if number is None:
        return "nothing"
    return format(number.normalize(), "f") if number == number.to_integral_value() else str(number)
