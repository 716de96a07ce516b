"""Judge agreement on planted ratings whose weighted kappa is known by hand."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from services.pair_builder.agreement import JudgeRatings, quadratic_weighted_kappa
from services.pair_builder.rules import PairRule
from services.pair_builder.stats import collect_stats
from shared.ledger import Ledger
from tests import factories
from vlf.cli import app


@pytest.mark.parametrize(
    "first, second, kappa",
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], 1.0),  # identical
        ([1, 5], [5, 1], -1.0),  # observed weighted disagreement 2 x 1; by chance 1: 1 - 2/1
        ([1, 1, 2, 2], [1, 2, 1, 2], 0.0),  # independent: observed counts equal the chance counts
        # weights (i-j)^2/16; observed: (1,2) 1/16 and (5,5) 0; chance: 1/2 of each of (1,2), (1,5),
        # (5,2), (5,5): (1/16 + 16/16 + 9/16 + 0) / 2 = 13/16
        ([1, 5], [2, 5], round(1 - (1 / 16) / (13 / 16), 4)),
        ([5, 3, 5], [5, 5, 5], 0.0),  # one judge always 5: no agreement beyond chance
        ([3], [3], None),  # one answer: undefined
        ([4, 4], [4, 4], None),  # one category on both sides: chance disagreement 0, undefined
    ],
)
def test_quadratic_weighted_kappa_on_ratings_worked_out_by_hand(
    first: list[int], second: list[int], kappa: float | None
) -> None:
    assert quadratic_weighted_kappa(first, second) == kappa


def test_two_judges_agreement_per_aspect_and_on_the_order_of_answers() -> None:
    one, two = factories.instruction(1), factories.instruction(2)
    annotations = [
        # judge's mean scores: one a 5 > b 3 > c 2.33; two a 3 < b 4.33
        factories.annotation(one, {"a": (5, 5, 5), "b": (3, 3, 3), "c": (1, 1, 5)}),
        factories.annotation(two, {"a": (2, 2, 5), "b": (4, 4, 5)}),
        # other: the same helpfulness, faithfulness the other way round; mean scores: one a 3.67 >
        # b 3.33 = c 3.33 (a tie: not ordered); two a 4 > b 3.67 (the judge has b above a)
        factories.annotation(one, {"a": (5, 1, 5), "b": (3, 3, 4), "c": (1, 5, 4)}, judge_id="other"),
        factories.annotation(two, {"a": (2, 5, 5), "b": (4, 2, 5)}, judge_id="other"),
        # a third judge on another instruction only: no answers in common with either
        factories.annotation(factories.instruction(3), {"a": (1, 1, 1)}, judge_id="lonely"),
    ]

    ratings = JudgeRatings()
    for annotation in annotations:
        ratings.add(annotation)

    [agreement] = ratings.agreement()

    assert agreement.judges == ("judge", "other")
    assert agreement.answers == {"Helpfulness": 5, "Visual Faithfulness": 5, "Ethical Considerations": 5}
    assert agreement.kappa["Helpfulness"] == 1.0
    assert agreement.kappa["Visual Faithfulness"] < 0
    # ordered by both: one a-b and a-c (agree), two a-b (disagree); one b-c is a tie for "other"
    assert (agreement.ordered_pairs, agreement.order_agreement) == (3, round(2 / 3, 4))


def test_vlf_stats_reports_the_agreement_of_the_judges_it_covers(tmp_path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    one = factories.instruction(1)
    ledger.record(
        factories.annotation(one, {"a": (5, 5, 5), "b": (1, 1, 1)}),
        factories.annotation(one, {"a": (4, 4, 4), "b": (2, 2, 2)}, judge_id="other"),
    )

    both = collect_stats(ledger, PairRule())
    one_judge = collect_stats(ledger, PairRule(judge_ids=("judge",)))

    [agreement] = both.agreement
    assert (agreement.ordered_pairs, agreement.order_agreement) == (1, 1.0)  # both put a above b
    # 5,1 against 4,2: observed 2 x 1/16; chance: 1/2 of each of (5,4), (5,2), (1,4), (1,2):
    # (1 + 9 + 9 + 1)/16 / 2 = 10/16
    assert agreement.kappa["Helpfulness"] == round(1 - (2 / 16) / (10 / 16), 4)
    assert one_judge.agreement == []
    ledger.close()


def test_vlf_stats_counts_the_pairs_the_agreement_quorum_drops(tmp_path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(ledger_url)
    ledger.migrate()
    one, two = factories.instruction(1), factories.instruction(2)
    ledger.record(
        # one: both judges put a above b; two: they disagree, the average puts a first (3 against 2.5)
        factories.annotation(one, {"a": (5, 5, 5), "b": (1, 1, 1)}),
        factories.annotation(one, {"a": (4, 4, 4), "b": (2, 2, 2)}, judge_id="other"),
        factories.annotation(two, {"a": (5, 5, 5), "b": (1, 1, 1)}),
        factories.annotation(two, {"a": (1, 1, 1), "b": (4, 4, 4)}, judge_id="other"),
    )
    ledger.close()
    env = {"VLF_LEDGER_URL": ledger_url, "VLF_BLOB_URL": str(tmp_path / "blobs")}
    judges = ["--judge", "judge", "--judge", "other"]

    agreed = CliRunner().invoke(app, ["stats", "--strategy", "agreement", *judges, "--json"], env=env)
    averaged = CliRunner().invoke(app, ["stats", *judges, "--json"], env=env)
    too_many = CliRunner().invoke(
        app, ["stats", "--strategy", "agreement", *judges, "--quorum", "3"], env=env
    )

    assert agreed.exit_code == 0, agreed.output
    pairs = json.loads(agreed.output)["pairs"]
    assert (pairs["strategy"], pairs["pairs"], pairs["below_quorum"]) == ("agreement", 1, 1)
    assert json.loads(averaged.output)["pairs"]["pairs"] == 2
    assert too_many.exit_code == 2
    assert "quorum 3 is more than the 2 judges counted" in too_many.output
