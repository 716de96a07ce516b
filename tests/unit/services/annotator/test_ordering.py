"""Position shuffling and swap mode."""

from collections import Counter

import pytest

from services.annotator.ordering import (
    average_ratings,
    presentation_order,
    reverse_order,
    self_agreement,
    unshuffle,
)
from services.annotator.parsing import AspectRating, ParsedRatings
from services.annotator.rubric import Aspect

H, V, E = Aspect.HELPFULNESS, Aspect.VISUAL_FAITHFULNESS, Aspect.ETHICAL_CONSIDERATIONS
RESPONSES = ["r-a", "r-b", "r-c", "r-d"]


def ratings(*per_answer: tuple[int, int, int]) -> ParsedRatings:
    return ParsedRatings(
        answers=tuple(
            {
                aspect: AspectRating(rating=value, rationale=f"{aspect.value} {value}")
                for aspect, value in zip((H, V, E), row, strict=True)
            }
            for row in per_answer
        )
    )


def test_order_is_pinned_so_it_holds_across_processes_and_python_versions() -> None:
    assert presentation_order("inst-1", RESPONSES) == [1, 3, 0, 2]
    assert presentation_order("inst-1", RESPONSES, salt="run2") == [3, 0, 1, 2]


def test_order_is_a_deterministic_permutation() -> None:
    for index in range(200):
        order = presentation_order(f"inst-{index}", RESPONSES)
        assert sorted(order) == [0, 1, 2, 3]
        assert presentation_order(f"inst-{index}", list(RESPONSES)) == order


def test_order_differs_across_instructions_and_balances_positions() -> None:
    orders = [tuple(presentation_order(f"inst-{index}", RESPONSES)) for index in range(2400)]
    assert len(set(orders)) == 24
    first_shown = Counter(order[0] for order in orders)
    assert all(500 <= first_shown[response] <= 700 for response in range(4)), first_shown


def test_order_depends_on_the_responses_not_their_arrival() -> None:
    arrived = ["r-c", "r-a", "r-d", "r-b"]
    shown = [RESPONSES[i] for i in presentation_order("inst-7", RESPONSES)]
    assert [arrived[i] for i in presentation_order("inst-7", arrived)] == shown


def test_duplicate_response_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        presentation_order("inst-1", ["r-a", "r-a"])


def test_reverse_order_mirrors_positions() -> None:
    assert reverse_order([1, 3, 0, 2]) == [2, 0, 3, 1]


def test_unshuffle_maps_shown_positions_back_to_responses() -> None:
    order = [2, 0, 1]  # response 2 shown first, response 0 second, response 1 third
    shown = ratings((5, 5, 5), (1, 1, 1), (3, 3, 3))
    assert unshuffle(shown, order) == ratings((1, 1, 1), (3, 3, 3), (5, 5, 5))


def test_unshuffle_refuses_an_order_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="not a permutation"):
        unshuffle(ratings((5, 5, 5), (1, 1, 1)), [0, 1, 2])


def test_swap_mode_agreement_and_average() -> None:
    order = presentation_order("inst-9", RESPONSES[:2])
    truth = ratings((4, 4, 5), (2, 3, 5))
    first_pass = ParsedRatings(answers=tuple(truth.answers[i] for i in order))
    second_order = reverse_order(order)
    biased = ratings((5, 4, 5), (2, 2, 5))  # the judge moved two ratings when the order flipped
    second_pass = ParsedRatings(answers=tuple(biased.answers[i] for i in second_order))

    first, second = unshuffle(first_pass, order), unshuffle(second_pass, second_order)
    assert first == truth and second == biased
    assert self_agreement(first, first) == 1.0
    assert self_agreement(first, second) == pytest.approx(4 / 6)
    assert average_ratings(first, second) == [{H: 4.5, V: 4.0, E: 5.0}, {H: 2.0, V: 2.5, E: 5.0}]


def test_passes_must_rate_the_same_things() -> None:
    with pytest.raises(ValueError, match="rated 2 and 1 answers"):
        self_agreement(ratings((1, 1, 1), (2, 2, 2)), ratings((1, 1, 1)))
    only_help = ParsedRatings(answers=({H: AspectRating(rating=1)},))
    with pytest.raises(ValueError, match="different aspects"):
        average_ratings(ratings((1, 1, 1)), only_help)
