"""The handler against a real SQLite ledger: when pairs are made, and that replays add nothing."""

from __future__ import annotations

import pytest

from services.pair_builder.handler import PairBuilderContext, handle_annotation
from services.pair_builder.rules import PairRule
from services.pair_builder.settings import PairBuilderSettings
from shared.contracts import events as ev
from tests import factories

INST = factories.instruction(3)


def test_one_judge_makes_pairs_at_once_and_a_replay_adds_nothing(ledger):
    ctx = PairBuilderContext(ledger=ledger, rule=PairRule())
    annotation = factories.annotation(INST, {"a": (5, 5, 5), "b": (3, 3, 3), "c": (1, 1, 1)})

    first = handle_annotation(annotation, ctx)
    again = handle_annotation(annotation, ctx)

    assert len(first) == 3
    assert [p.pair_id for p in again] == [p.pair_id for p in first]
    assert ledger.pairs_for(INST.instruction_id) == first
    assert ledger.count(ev.Annotation) == 1


def test_named_judges_wait_for_each_other_and_ignore_others(ledger):
    ctx = PairBuilderContext(ledger=ledger, rule=PairRule(judge_ids=("j1", "j2")))
    j1 = factories.annotation(INST, {"a": (5, 5, 5), "b": (3, 3, 3)}, judge_id="j1")
    j2 = factories.annotation(INST, {"a": (1, 1, 1), "b": (2, 2, 2)}, judge_id="j2")
    other = factories.annotation(INST, {"a": (1, 1, 1), "b": (5, 5, 5)}, judge_id="other")

    assert handle_annotation(j1, ctx) == []
    assert handle_annotation(other, ctx) == []
    [pair] = handle_annotation(j2, ctx)

    assert (pair.chosen.model_id, pair.chosen.score, pair.rejected.score) == ("a", 3.0, 2.5)
    assert pair.judge_ids == ["j1", "j2"]
    assert ledger.count(ev.Annotation) == 3


def test_pairs_carry_the_split_of_their_instruction(ledger):
    ctx = PairBuilderContext(ledger=ledger, rule=PairRule(), heldout_fraction=1.0)

    pairs = handle_annotation(factories.annotation(INST, {"a": (5, 5, 5), "b": (1, 1, 1)}), ctx)

    assert [p.split for p in pairs] == ["heldout"]


def test_settings_read_the_environment_and_check_the_margin(monkeypatch):
    monkeypatch.setenv("VLF_PAIRS_STRATEGY", "aspect:Visual Faithfulness")
    monkeypatch.setenv("VLF_PAIRS_JUDGE_IDS", '["gpt-4v", "qwen-judge"]')
    monkeypatch.setenv("VLF_PAIRS_MAX_PAIRS_PER_INSTRUCTION", "2")

    rule = PairBuilderSettings().rule()

    assert rule == PairRule(
        strategy="aspect:Visual Faithfulness", max_pairs_per_instruction=2, judge_ids=("gpt-4v", "qwen-judge")
    )
    monkeypatch.setenv("VLF_PAIRS_STRATEGY", "vlfeedback")
    monkeypatch.setenv("VLF_PAIRS_MIN_MARGIN", "1.0")
    with pytest.raises(ValueError, match="strategy='vlfeedback', min_margin=1.0"):
        PairBuilderSettings()


def test_settings_take_the_agreement_quorum_and_refuse_one_that_cannot_be_met(monkeypatch):
    monkeypatch.setenv("VLF_PAIRS_STRATEGY", "agreement")
    monkeypatch.setenv("VLF_PAIRS_JUDGE_IDS", '["gpt-4v", "qwen-judge", "human"]')
    monkeypatch.setenv("VLF_PAIRS_QUORUM", "2")

    assert PairBuilderSettings().rule() == PairRule(
        strategy="agreement", judge_ids=("gpt-4v", "qwen-judge", "human"), quorum=2
    )
    monkeypatch.setenv("VLF_PAIRS_QUORUM", "4")
    with pytest.raises(ValueError, match="quorum 4 is more than the 3 judges counted"):
        PairBuilderSettings()
