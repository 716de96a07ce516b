"""Position bias: in which order the judge sees an instruction's answers, and undoing that order.

LLM judges favour answers by position, so each instruction's answers are shown in a shuffled
order that is deterministic (a redelivered message builds the same prompt, so the ledger's cached
reply still applies) and differs between instructions. Swap mode asks the judge twice, the second
time in reverse order, and keeps the mean; its self-agreement measures how much position matters.

An ``order`` is a list where ``order[position] = index of the response shown at that position``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from services.annotator.parsing import AspectRating, ParsedRatings
from services.annotator.rubric import Aspect


def presentation_order(instruction_id: str, response_ids: Sequence[str], salt: str = "") -> list[int]:
    """A deterministic shuffle of ``response_ids`` for this instruction.

    Responses are sorted by sha256(instruction_id, salt, response_id): unlike ``hash()`` or
    ``random.Random`` it is the same on every Python version and process, and the order shown
    depends only on which responses there are, not on the order in which they arrived. A new
    ``salt`` gives a fresh shuffle of the whole dataset (for a second annotation run).
    """
    if len(set(response_ids)) != len(response_ids):
        raise ValueError(f"response ids must be distinct, got {list(response_ids)}")
    prefix = f"{instruction_id}\x1f{salt}\x1f"
    return sorted(
        range(len(response_ids)),
        key=lambda index: hashlib.sha256((prefix + response_ids[index]).encode()).digest(),
    )


def reverse_order(order: Sequence[int]) -> list[int]:
    """The swap-mode order: every response moves to the mirrored position."""
    return list(reversed(order))


def unshuffle(parsed: ParsedRatings, order: Sequence[int]) -> ParsedRatings:
    """Ratings indexed by response (as in ``response_ids``) from ratings indexed by shown position."""
    if sorted(order) != list(range(len(parsed.answers))):
        raise ValueError(f"order {list(order)} is not a permutation of 0..{len(parsed.answers) - 1}")
    by_response: list[dict[Aspect, AspectRating]] = [{} for _ in order]
    for position, response_index in enumerate(order):
        by_response[response_index] = parsed.answers[position]
    return ParsedRatings(answers=tuple(by_response))


def self_agreement(first: ParsedRatings, second: ParsedRatings) -> float:
    """Share of (answer, aspect) ratings that are equal in two passes, both in response order."""
    keys = _common_keys(first, second)
    same = sum(first.rating(answer, aspect) == second.rating(answer, aspect) for answer, aspect in keys)
    return same / len(keys)


def average_ratings(first: ParsedRatings, second: ParsedRatings) -> list[dict[Aspect, float]]:
    """Mean of two passes per response and aspect, both in response order.

    Kept as a float (4 and 5 give 4.5) rather than rounded: rounding would reintroduce the
    position effect that averaging removes, and pair scores are means of ratings anyway.
    """
    _common_keys(first, second)
    return [
        {aspect: (ratings[aspect].rating + other[aspect].rating) / 2 for aspect in ratings}
        for ratings, other in zip(first.answers, second.answers, strict=True)
    ]


def _common_keys(first: ParsedRatings, second: ParsedRatings) -> list[tuple[int, Aspect]]:
    """Every (answer, aspect) rated; raises when the two passes did not rate the same things."""
    if len(first.answers) != len(second.answers):
        raise ValueError(f"passes rated {len(first.answers)} and {len(second.answers)} answers")
    keys = []
    for answer, (ratings, other) in enumerate(zip(first.answers, second.answers, strict=True)):
        if set(ratings) != set(other):
            raise ValueError(f"answer {answer}: the passes rated different aspects")
        keys += [(answer, aspect) for aspect in ratings]
    if not keys:
        raise ValueError("no ratings to compare")
    return keys
