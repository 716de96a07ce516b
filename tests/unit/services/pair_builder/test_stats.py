"""Dataset statistics on a small ledger, checked by hand."""

from __future__ import annotations

import pytest

from services.pair_builder.handler import PairBuilderContext, handle_annotation
from services.pair_builder.rules import PairRule
from services.pair_builder.stats import collect_stats
from shared.ledger import Ledger
from tests import factories


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.migrate()
    one = factories.instruction(1)
    two = factories.instruction(2)
    led.record(
        factories.annotation(one, {"a": (5, 5, 5), "b": (3, 3, 3), "c": (3, 4, 2)}),
        factories.annotation(two, {"a": (4, None, 4), "b": (2, 2, 2)}),
        factories.annotation(two, {"a": (1, 1, 1), "b": (5, 5, 5)}, judge_id="other"),
    )
    yield led
    led.close()


def test_ratings_per_model_and_aspect_and_histograms(ledger):
    stats = collect_stats(ledger, PairRule(judge_ids=("judge",)))

    assert stats.annotations == 2
    a, b, c = stats.models
    assert (a.model_id, a.answers, b.answers, c.answers) == ("a", 2, 2, 1)
    assert a.aspects["Helpfulness"].mean == 4.5
    assert a.aspects["Visual Faithfulness"].model_dump() == {"mean": 5.0, "rated": 1, "unrated": 1}
    assert b.aspects["Ethical Considerations"].mean == 2.5
    assert stats.rating_histograms["Visual Faithfulness"] == {"2": 1, "3": 1, "4": 1, "5": 1, "none": 1}


def test_pair_counts_follow_the_rule_and_match_the_ledger(ledger):
    ctx = PairBuilderContext(ledger=ledger, rule=PairRule(judge_ids=("judge",)))
    for instruction_id in (factories.instruction(1).instruction_id, factories.instruction(2).instruction_id):
        handle_annotation(
            next(a for a in ledger.annotations_for(instruction_id) if a.judge_id == "judge"), ctx
        )

    stats = collect_stats(ledger, PairRule(judge_ids=("judge",)))

    # one: a 5, b 3, c 3 -> a>b, a>c, b=c tie; two: a unrated -> 1 skipped
    assert stats.pairs.model_dump(exclude={"strategy", "judge_ids"}) == {
        "instructions": 2,
        "pairs": 2,
        "pairs_by_split": {"train": 2},
        "ties_dropped": 1,
        "skipped_bad_ratings": 1,
        "below_min_margin": 0,
        "below_quorum": 0,
        "not_selected": 0,
        "capped": 0,
        "margin_histogram": {"2.00": 2},
    }
    assert stats.pairs_in_ledger == 2


def test_every_judge_counts_on_its_own_when_none_is_named(ledger):
    stats = collect_stats(ledger)

    assert stats.annotations == 3
    assert stats.pairs.instructions == 3
    assert stats.pairs.margin_histogram == {"2.00": 2, "4.00": 1}


def test_named_judges_are_averaged_per_instruction(ledger):
    stats = collect_stats(ledger, PairRule(judge_ids=("judge", "other")))

    # only instruction two has both judges; a is unrated by "judge" -> its one pair is skipped
    assert (stats.pairs.instructions, stats.pairs.pairs, stats.pairs.skipped_bad_ratings) == (1, 0, 1)
