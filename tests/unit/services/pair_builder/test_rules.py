"""The pair rule on hand-computed cases (DESIGN.md "pairs" and services/pair_builder/rules.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.pair_builder.rules import PairRule, build_pairs
from shared.contracts import events as ev
from shared.contracts.ids import pair_id
from tests import factories

INST = factories.instruction(7, image_uris=["sha256:" + "a" * 64 + ".png"])
JUDGE = ("judge",)


def rid(model: str) -> str:
    return f"{INST.instruction_id}-{model}-0"


def pairs_of(scores: dict[str, tuple], rule: PairRule = PairRule(), split: str = "train"):
    return build_pairs([factories.annotation(INST, scores)], rule, split, JUDGE)


def summary(outcome) -> set[tuple[str, str, float]]:
    return {(p.chosen.model_id, p.rejected.model_id, round(p.margin, 4)) for p in outcome.pairs}


def test_two_answers_higher_mean_is_chosen_with_every_recorded_field():
    outcome = pairs_of({"m1": (2, 2, 5), "m2": (5, 4, 5)}, split="heldout")

    [pair] = outcome.pairs
    assert pair.chosen == ev.PairSide(response_id=rid("m2"), model_id="m2", text="answer of m2", score=14 / 3)
    assert pair.rejected == ev.PairSide(response_id=rid("m1"), model_id="m1", text="answer of m1", score=3.0)
    assert pair.margin == pytest.approx(5 / 3)
    assert pair.pair_id == pair_id(INST.instruction_id, rid("m2"), rid("m1"), "vlfeedback|judge")
    assert (pair.strategy, pair.judge_ids, pair.split) == ("vlfeedback", ["judge"], "heldout")
    assert (pair.instruction_id, pair.prompt, pair.image_uris) == (
        INST.instruction_id,
        INST.prompt,
        INST.image_uris,
    )
    assert (outcome.ties_dropped, outcome.skipped_bad_ratings) == (0, 0)


def test_equal_means_are_dropped_even_with_different_ratings():
    outcome = pairs_of({"m1": (5, 3, 4), "m2": (4, 4, 4), "m3": (1, 1, 1)})

    assert summary(outcome) == {("m1", "m3", 3.0), ("m2", "m3", 3.0)}
    assert outcome.ties_dropped == 1


def test_three_answers_make_three_pairs():
    outcome = pairs_of({"a": (5, 5, 5), "b": (4, 4, 4), "c": (1, 2, 3)})

    assert summary(outcome) == {("a", "b", 1.0), ("a", "c", 3.0), ("b", "c", 2.0)}


def test_four_answers_make_up_to_six_pairs():
    outcome = pairs_of({"a": (5, 5, 5), "b": (4, 4, 5), "c": (3, 3, 3), "d": (1, 1, 2)})

    assert summary(outcome) == {
        ("a", "b", 0.6667),
        ("a", "c", 2.0),
        ("a", "d", 3.6667),
        ("b", "c", 1.3333),
        ("b", "d", 3.0),
        ("c", "d", 1.6667),
    }


def test_a_non_numeric_rating_drops_every_pair_of_that_answer():
    outcome = pairs_of({"a": (5, 5, 5), "b": (4, None, 5), "c": (3, 3, 3), "d": (1, 1, 2)})

    assert summary(outcome) == {("a", "c", 2.0), ("a", "d", 3.6667), ("c", "d", 1.6667)}
    assert outcome.skipped_bad_ratings == 3


def test_min_margin_drops_small_gaps():
    rule = PairRule(strategy="min_margin", min_margin=1.5)
    outcome = pairs_of({"a": (5, 5, 5), "b": (4, 4, 5), "c": (3, 3, 3), "d": (1, 1, 2)}, rule)

    assert summary(outcome) == {("a", "c", 2.0), ("a", "d", 3.6667), ("b", "d", 3.0), ("c", "d", 1.6667)}
    assert outcome.below_min_margin == 2
    assert all(p.strategy == "min_margin" for p in outcome.pairs)


def test_best_vs_worst_makes_one_pair_and_none_on_a_tie():
    rule = PairRule(strategy="best_vs_worst")

    best = pairs_of({"a": (4, 4, 4), "b": (5, 5, 5), "c": (3, 3, 3), "d": (1, 1, 2)}, rule)
    tied = pairs_of({"a": (4, 4, 4), "b": (4, 4, 4), "c": (4, 4, 4)}, rule)

    assert summary(best) == {("b", "d", 3.6667)}
    assert best.not_selected == 5
    assert tied.pairs == [] and tied.ties_dropped == 3


def test_aspect_strategy_scores_one_aspect_only():
    rule = PairRule(strategy="aspect:Visual Faithfulness")
    outcome = pairs_of({"a": (5, 1, 5), "b": (1, 4, 1), "c": (3, 4, None)}, rule)

    assert summary(outcome) == {("b", "a", 3.0), ("c", "a", 3.0)}
    assert outcome.ties_dropped == 1
    assert outcome.skipped_bad_ratings == 0  # the missing ethics rating is not used here


def test_cap_keeps_the_largest_margins_and_breaks_ties_by_pair_id():
    rule = PairRule(max_pairs_per_instruction=2)
    scores = {"a": (5, 5, 5), "b": (4, 4, 4), "c": (3, 3, 3), "d": (2, 2, 2)}
    outcome = pairs_of(scores, rule)
    all_pairs = pairs_of(scores).pairs

    margin_two = sorted(p.pair_id for p in all_pairs if p.margin == 2.0)
    assert {p.pair_id for p in outcome.pairs} == {
        next(p.pair_id for p in all_pairs if p.margin == 3.0),
        margin_two[0],
    }
    assert outcome.capped == 4


def test_several_judges_average_each_aspect_then_the_aspects():
    j1 = factories.annotation(INST, {"a": (5, 4, 5), "b": (4, 4, 5), "c": (1, 1, 1)}, judge_id="j1")
    j2 = factories.annotation(INST, {"a": (3, 4, 5), "b": (4, 4, 5), "c": (2, 2, 2)}, judge_id="j2")

    outcome = build_pairs([j1, j2], PairRule(judge_ids=("j1", "j2")), "train", ("j2", "j1"))

    # a: (4, 4, 5) -> 13/3; b: (4, 4, 5) -> 13/3 (a tie); c: (1.5, 1.5, 1.5) -> 1.5
    assert summary(outcome) == {("a", "c", 2.8333), ("b", "c", 2.8333)}
    assert outcome.ties_dropped == 1
    assert all(p.judge_ids == ["j1", "j2"] for p in outcome.pairs)
    single = build_pairs([j1, j2], PairRule(), "train", ("j1",)).pairs
    assert {p.pair_id for p in single}.isdisjoint({p.pair_id for p in outcome.pairs})


def test_an_answer_one_judge_did_not_rate_is_dropped():
    j1 = factories.annotation(INST, {"a": (5, 5, 5), "b": (1, 1, 1), "c": (3, 3, 3)}, judge_id="j1")
    j2 = factories.annotation(INST, {"a": (5, 5, 5), "b": (1, 1, 1)}, judge_id="j2")

    outcome = build_pairs([j1, j2], PairRule(judge_ids=("j1", "j2")), "train", ("j1", "j2"))

    assert summary(outcome) == {("a", "b", 4.0)}
    assert outcome.skipped_bad_ratings == 2


def test_other_judges_are_ignored_and_a_missing_counted_judge_is_an_error():
    j1 = factories.annotation(INST, {"a": (5, 5, 5), "b": (1, 1, 1)}, judge_id="j1")
    noise = factories.annotation(INST, {"a": (1, 1, 1), "b": (5, 5, 5)}, judge_id="other")

    assert summary(build_pairs([j1, noise], PairRule(), "train", ("j1",))) == {("a", "b", 4.0)}
    with pytest.raises(ValueError, match="no annotation from judges"):
        build_pairs([j1], PairRule(), "train", ("j1", "j2"))


THREE_JUDGES = ("j1", "j2", "j3")


def three_judges_disagreeing() -> list[ev.Annotation]:
    """Own scores: j1 a 5 > b 3 > c 1; j2 b 5 > a 4 > c 2; j3 a 5 > b 2 = c 2 (a tie).

    Averaged: a 14/3 > b 10/3 > c 5/3. Backers of each pair as the average orders it: a over b j1
    and j3; a over c all three; b over c j1 and j2 (j3's tie backs neither side).
    """
    return [
        factories.annotation(INST, {"a": (5, 5, 5), "b": (3, 3, 3), "c": (1, 1, 1)}, judge_id="j1"),
        factories.annotation(INST, {"a": (4, 4, 4), "b": (5, 5, 5), "c": (2, 2, 2)}, judge_id="j2"),
        factories.annotation(INST, {"a": (5, 5, 5), "b": (2, 2, 2), "c": (2, 2, 2)}, judge_id="j3"),
    ]


def test_agreement_keeps_only_pairs_every_judge_orders_the_same_way_by_default():
    rule = PairRule(strategy="agreement", judge_ids=THREE_JUDGES)

    outcome = build_pairs(three_judges_disagreeing(), rule, "train", THREE_JUDGES)

    assert summary(outcome) == {("a", "c", 3.0)}
    assert outcome.below_quorum == 2
    [pair] = outcome.pairs
    assert pair.pair_id == pair_id(INST.instruction_id, rid("a"), rid("c"), "agreement|j1,j2,j3")


def test_agreement_with_a_quorum_of_two_keeps_the_pairs_two_judges_back():
    rule = PairRule(strategy="agreement", judge_ids=THREE_JUDGES, quorum=2)

    outcome = build_pairs(three_judges_disagreeing(), rule, "train", THREE_JUDGES)

    assert summary(outcome) == {("a", "b", 1.3333), ("a", "c", 3.0), ("b", "c", 1.6667)}
    assert outcome.below_quorum == 0


def test_a_judge_backs_a_pair_on_its_own_mean_score_not_aspect_by_aspect():
    j1 = factories.annotation(INST, {"a": (5, 5, 5), "b": (1, 1, 1)}, judge_id="j1")
    # j2 puts b first on helpfulness, a first on its mean (4 against 5/3): it backs a over b
    j2 = factories.annotation(INST, {"a": (2, 5, 5), "b": (3, 1, 1)}, judge_id="j2")
    # here its mean puts b first (4/3 against 5/3), while the average still puts a first (19/6, 4/3)
    j2_reversed = factories.annotation(INST, {"a": (2, 1, 1), "b": (3, 1, 1)}, judge_id="j2")
    rule = PairRule(strategy="agreement", judge_ids=("j1", "j2"))

    assert summary(build_pairs([j1, j2], rule, "train", ("j1", "j2"))) == {("a", "b", 3.1667)}
    reversed_outcome = build_pairs([j1, j2_reversed], rule, "train", ("j1", "j2"))
    assert (reversed_outcome.pairs, reversed_outcome.below_quorum) == ([], 1)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"strategy": "agreement", "judge_ids": ("j1",)}, "needs two or more judge_ids"),
        ({"strategy": "agreement"}, "needs two or more judge_ids"),
        ({"strategy": "agreement", "judge_ids": ("j1", "j2"), "quorum": 3}, "more than the 2 judges"),
        (
            {"strategy": "vlfeedback", "judge_ids": ("j1", "j2"), "quorum": 2},
            "with strategy 'agreement' only",
        ),
        ({"strategy": "agreement", "judge_ids": ("j1", "j2"), "quorum": 1}, "greater than or equal to 2"),
    ],
)
def test_an_agreement_rule_that_cannot_work_is_refused_with_the_reason(fields, message):
    with pytest.raises(ValidationError, match=message):
        PairRule(**fields)


def test_pair_ids_are_deterministic():
    scores = {"a": (5, 5, 5), "b": (4, 4, 4), "c": (1, 1, 1)}

    assert [p.pair_id for p in pairs_of(scores).pairs] == [p.pair_id for p in pairs_of(scores).pairs]


def test_unknown_strategies_and_aspects_are_refused():
    with pytest.raises(ValidationError, match="unknown pair strategy"):
        PairRule(strategy="best")
    with pytest.raises(ValidationError, match="unknown aspect 'Honesty'"):
        PairRule(strategy="aspect:Honesty")
