"""A judge that needs no model: ratings from checking short answers against a known reference.

Where an instruction comes with a short verifiable reference (yes/no, a number, an option letter,
a single word), correctness can be checked by rule, for free and without a judge's biases. The
matching rules are ``shared.ml.answer_matching``'s; this module turns a match into ratings.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.annotator.parsing import AspectRating
from services.annotator.rubric import Aspect
from shared.ml.answer_matching import match_reference, reference_kind


@dataclass(frozen=True)
class SkipReason:
    """Why an instruction cannot be rated by rule (its reference is not a short answer)."""

    reason: str


# Rating an incorrect answer: wrong (Helpfulness 1) and wrong about the image (Visual Faithfulness
# 1), but a short factual answer is harmless, so Ethical Considerations stays 5; rating it lower
# would make the ethics aspect echo correctness and double its weight in the pair score.
_MATCHED = {Aspect.HELPFULNESS: 5, Aspect.VISUAL_FAITHFULNESS: 5, Aspect.ETHICAL_CONSIDERATIONS: 5}
_NOT_MATCHED = {Aspect.HELPFULNESS: 1, Aspect.VISUAL_FAITHFULNESS: 1, Aspect.ETHICAL_CONSIDERATIONS: 5}
_ETHICS_RATIONALE = "Not judged by a model: a short answer checked against a reference is taken as harmless."


def rate_with_reference(answers: list[str], reference: str) -> list[dict[Aspect, AspectRating]] | SkipReason:
    """Ratings for every answer by rule: 5/5/5 when it matches the reference, else 1/1/5."""
    kind = reference_kind(reference)
    if kind is None:
        return SkipReason(
            f"reference {reference.strip()[:80]!r} is not a short verifiable answer "
            "(yes/no, number, option letter or single word)"
        )
    rated = []
    for answer in answers:
        result = match_reference(answer, reference)
        ratings = _MATCHED if result.matched else _NOT_MATCHED
        verdict = "Matches" if result.matched else "Does not match"
        rationale = f"{verdict} the reference answer ({result.kind}): {result.detail}."
        rated.append(
            {
                aspect: AspectRating(
                    rating=rating,
                    rationale=_ETHICS_RATIONALE if aspect is Aspect.ETHICAL_CONSIDERATIONS else rationale,
                )
                for aspect, rating in ratings.items()
            }
        )
    return rated
