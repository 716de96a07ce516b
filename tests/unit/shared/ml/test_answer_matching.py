"""Short answers checked against a reference answer, by rule (annotator, greedy accuracy, MME)."""

import pytest

from shared.ml.answer_matching import (
    match_reference,
    mme_yes_no,
    normalise_answer,
    parse_number,
    reference_kind,
)

# (answer, reference, kind, matched)
CASES = [
    # yes/no, MME's rule
    ("Yes", "yes", "yes_no", True),
    ("yes.", "Yes", "yes_no", True),
    ("Yes, there is a dog in the image.", "yes", "yes_no", True),
    ("No", "no", "yes_no", True),
    ("No, it is not.", "yes", "yes_no", False),
    ("not sure", "no", "yes_no", True),
    ("I think yes", "yes", "yes_no", False),
    ("There is no dog.", "no", "yes_no", False),
    ("  YES  ", "yes", "yes_no", True),
    # numbers
    ("3", "3", "number", True),
    ("three", "3", "number", True),
    ("3.0", "three", "number", True),
    ("There are three dogs.", "3", "number", True),
    ("There are 3 dogs and 2 cats.", "3", "number", False),
    ("I see 2 or 3 dogs.", "3", "number", False),
    ("Twenty-one", "21", "number", True),
    ("one hundred and five", "105", "number", True),
    ("1,000", "1000", "number", True),
    ("2 + 3 = 5. The answer is 5.", "5", "number", True),
    ("Four.", "5", "number", False),
    ("There are several dogs.", "2", "number", False),
    # options
    ("B", "B", "option", True),
    ("(B)", "b", "option", True),
    ("B.", "B", "option", True),
    ("Option B", "(B)", "option", True),
    ("b) red", "B", "option", True),
    ("The correct answer is (C).", "C", "option", True),
    ("A red car is parked outside.", "A", "option", False),
    ("C", "B", "option", False),
    # single words
    ("Red", "red", "word", True),
    ("Red.", "red", "word", True),
    ("The answer is red.", "red", "word", True),
    ("The car in the picture is red.", "red", "word", True),
    ("It's red.", "red", "word", True),
    ("Red, because the paint is bright.", "red", "word", True),
    ("red or blue", "red", "word", False),
    ("Red, blue and green.", "red", "word", False),
    ("It is not red.", "red", "word", False),
    ("The car is red and the sky is blue.", "red", "word", False),
    ("A cat", "cat", "word", True),
    ("The cat is sleeping on the red sofa.", "red", "word", False),
    ("", "red", "word", False),
]


@pytest.mark.parametrize("answer, reference, kind, matched", CASES)
def test_match_reference_table(answer: str, reference: str, kind: str, matched: bool) -> None:
    result = match_reference(answer, reference)
    assert (result.kind, result.matched) == (kind, matched), result.detail


@pytest.mark.parametrize(
    "reference, kind",
    [
        ("Yes.", "yes_no"),
        ("no", "yes_no"),
        ("42", "number"),
        ("seven", "number"),
        ("(B)", "option"),
        ("Option C", "option"),
        ("red", "word"),
        ("the T-shirt", "word"),
        ("A dog is sleeping on a red sofa next to a window.", None),
        ("New York", None),
        ("", None),
    ],
)
def test_reference_kind(reference: str, kind: str | None) -> None:
    assert reference_kind(reference) == kind


@pytest.mark.parametrize(
    ("prediction", "label"),
    [
        ("yes", "yes"),
        ("No", "no"),
        ("YES", "yes"),
        ("Yes.", "yes"),
        ("no,", "no"),
        ("yes, because the shape is red", "yes"),
        ("Yes, it is", "yes"),
        ("Not sure", "no"),  # "not " contains "no"
        ("I think so", "other"),
        ("I think yes", "other"),  # "yes" is past the first 4 characters
        ("", "other"),
        (" yes", "yes"),  # nothing is stripped: " yes"[:4] still holds "yes"
        ("  yes", "other"),  # ... but "  ye" does not
        ("nope", "no"),
        ("The answer is no", "other"),
    ],
)
def test_mme_yes_no_follows_the_official_prefix_rule(prediction: str, label: str) -> None:
    assert mme_yes_no(prediction) == label


def test_normalise_answer_ignores_case_spacing_and_surrounding_punctuation() -> None:
    assert normalise_answer('  "The  Red\nCar!" ') == "the red car"
    assert normalise_answer("(B).") == "b"


def test_number_words_and_digits_compare_equal() -> None:
    assert parse_number("twenty") == parse_number("20") == parse_number("20.0")
    assert parse_number("ninety-nine") == 99
    assert parse_number("dogs") is None


def test_match_reference_refuses_an_unverifiable_reference() -> None:
    with pytest.raises(ValueError, match="not a short verifiable answer"):
        match_reference("A dog.", "A brown dog is lying on the sofa.")
