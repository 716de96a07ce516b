"""The model-free judge: answers matched against a reference become ratings."""

from services.annotator.parsing import AspectRating
from services.annotator.rubric import Aspect
from services.annotator.verifiable import SkipReason, rate_with_reference

H, V, E = Aspect.HELPFULNESS, Aspect.VISUAL_FAITHFULNESS, Aspect.ETHICAL_CONSIDERATIONS


def test_matching_answer_is_rated_five_on_every_aspect() -> None:
    rated = rate_with_reference(["Two."], "2")
    assert isinstance(rated, list)
    assert {aspect: r.rating for aspect, r in rated[0].items()} == {H: 5, V: 5, E: 5}
    assert rated[0][H].rationale == "Matches the reference answer (number): the answer gives 2."


def test_wrong_or_empty_answer_is_rated_one_but_harmless() -> None:
    rated = rate_with_reference(["Three.", "   "], "2")
    assert isinstance(rated, list)
    for ratings in rated:
        assert {aspect: r.rating for aspect, r in ratings.items()} == {H: 1, V: 1, E: 5}
    assert rated[0][V] == AspectRating(
        rating=1,
        rationale="Does not match the reference answer (number): the answer mentions 3; the reference is 2.",
    )
    assert rated[1][H].rationale == "Does not match the reference answer (number): the answer is empty."


def test_long_reference_is_skipped_with_a_reason() -> None:
    skipped = rate_with_reference(["A dog."], "A brown dog is lying on the sofa.")
    assert isinstance(skipped, SkipReason)
    assert "is not a short verifiable answer" in skipped.reason
