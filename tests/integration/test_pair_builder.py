"""The pair builder service on the real broker: annotations in, the exact pairs out on the pairs topic
and in the ledger; a redelivered annotation adds no pair."""

from __future__ import annotations

from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import decode, encode
from shared.contracts.ids import pair_id
from tests import factories
from tests.integration.kafka_helpers import (
    consume_all,
    create_topics,
    produce,
    service_env,
    start_process,
    stop_process,
    wait_until,
)

SERVICE = "services.pair_builder"


def _produce(bootstrap: str, namespace: str, annotations: list[ev.Annotation]) -> None:
    name = namespace + topics.ANNOTATIONS.name
    create_topics(
        bootstrap, [name, namespace + topics.ANNOTATIONS.dlq], partitions=topics.ANNOTATIONS.partitions
    )
    produce(bootstrap, name, [(a.instruction_id.encode(), encode(a)) for a in annotations])


def _expected(inst: ev.Instruction, chosen: str, rejected: str, margin: float) -> tuple:
    chosen_id, rejected_id = (f"{inst.instruction_id}-{m}-0" for m in (chosen, rejected))
    return pair_id(inst.instruction_id, chosen_id, rejected_id, "vlfeedback|judge"), chosen, rejected, margin


def _summary(pair: ev.Pair) -> tuple:
    return pair.pair_id, pair.chosen.model_id, pair.rejected.model_id, round(pair.margin, 4)


def test_annotations_become_the_exact_pairs_on_the_topic_and_in_the_ledger(
    kafka_bootstrap, namespace, ledger_url, ledger, tmp_path
):
    four = factories.instruction(1)
    two = factories.instruction(2)
    tied = factories.instruction(3)
    annotations = [
        factories.annotation(four, {"a": (5, 5, 5), "b": (4, 4, 5), "c": (3, 3, 3), "d": (4, None, 4)}),
        factories.annotation(two, {"x": (2, 2, 5), "y": (5, 4, 5)}),
        factories.annotation(tied, {"p": (4, 4, 4), "q": (5, 4, 3)}),
    ]
    expected = {
        _expected(four, "a", "b", 0.6667),
        _expected(four, "a", "c", 2.0),
        _expected(four, "b", "c", 1.3333),
        _expected(two, "y", "x", 1.6667),
    }
    env = service_env(kafka_bootstrap, namespace, ledger_url, VLF_HTTP_PORT="0")
    process = start_process(SERVICE, env, tmp_path / "log")
    try:
        _produce(kafka_bootstrap, namespace, annotations)
        wait_until(
            lambda: ledger.count(ev.Pair) == 4 and ledger.count(ev.Annotation) == 3, 90, "pairs in the ledger"
        )
        published = consume_all(kafka_bootstrap, namespace + topics.PAIRS.name, expect=4)

        _produce(kafka_bootstrap, namespace, [annotations[0]])  # a redelivery of the same annotation
        republished = consume_all(kafka_bootstrap, namespace + topics.PAIRS.name, expect=7)
    finally:
        assert stop_process(process) == 0, (tmp_path / "log").read_text()

    on_topic = [decode(topics.PAIRS, r.value) for r in published]
    in_ledger = [p for inst in (four, two, tied) for p in ledger.pairs_for(inst.instruction_id)]
    assert {_summary(p) for p in on_topic} == expected
    assert {_summary(p) for p in in_ledger} == expected
    assert sorted(on_topic, key=lambda p: p.pair_id) == sorted(in_ledger, key=lambda p: p.pair_id)
    assert all(r.key == decode(topics.PAIRS, r.value).instruction_id.encode() for r in published)
    assert all(
        p.strategy == "vlfeedback" and p.judge_ids == ["judge"] and p.split == "train" for p in in_ledger
    )

    assert len(republished) == 7  # the redelivery re-publishes the same three pairs ...
    assert {decode(topics.PAIRS, r.value).pair_id for r in republished} == {e[0] for e in expected}
    assert ledger.count(ev.Pair) == 4  # ... and adds no row
    assert ledger.count(ev.Annotation) == 3
