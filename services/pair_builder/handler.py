"""Annotation -> preference pairs. Pure logic: the runtime owns Kafka, commits and the DLQ.

Which judges count: with ``rule.judge_ids`` empty, each annotation makes pairs from its own judge
alone (the paper: one judge). With judges named, the instruction waits until every named judge
has annotated it, then their ratings are averaged (see ``rules``); other judges' annotations are
recorded and make nothing. Pairs are written to the ledger before they are published; their ids
are deterministic, so a redelivered annotation re-publishes the same pairs and adds no row.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.pair_builder.rules import PairRule, build_pairs
from services.pair_builder.split import split_of
from shared.contracts import events as ev
from shared.ledger import Ledger


@dataclass(frozen=True)
class PairBuilderContext:
    ledger: Ledger
    rule: PairRule
    heldout_fraction: float = 0.005
    seed: int = 42


def counted_judges(event: ev.Annotation, rule: PairRule) -> tuple[str, ...]:
    """The judges whose annotations make this instruction's pairs."""
    return rule.judge_ids or (event.judge_id,)


def is_complete(annotations: list[ev.Annotation], judge_ids: tuple[str, ...]) -> bool:
    return set(judge_ids) <= {a.judge_id for a in annotations}


def handle_annotation(event: ev.Annotation, ctx: PairBuilderContext) -> list[ev.Pair]:
    ctx.ledger.record(event)
    judges = counted_judges(event, ctx.rule)
    if event.judge_id not in judges:
        return []
    annotations = ctx.ledger.annotations_for(event.instruction_id)
    if not is_complete(annotations, judges):
        return []
    split = split_of(event.instruction_id, ctx.heldout_fraction, ctx.seed)
    pairs = build_pairs(annotations, ctx.rule, split, judges).pairs
    ctx.ledger.record(*pairs)
    return pairs
