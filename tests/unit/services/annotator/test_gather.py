"""The gather rule of the annotator, with the verifiable judge (no model) and a real SQLite ledger."""

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.annotator.handler import AnnotatorContext, handle_response, sweep
from services.annotator.metrics import JudgeMetrics
from services.annotator.settings import AnnotatorSettings
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.registry import Registry


@pytest.fixture
def ctx(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    registry = Registry.model_validate(
        {
            "models": [{"id": m, "backend": "transformers", "model": "/m"} for m in ("a", "b", "c")],
            "judges": [{"id": "verify", "kind": "verifiable"}],
        }
    )
    return AnnotatorContext(
        judge=registry.judge("verify"),
        registry=registry,
        backend=None,
        ledger=ledger,
        blobs=BlobStore(str(tmp_path / "blobs")),
        settings=AnnotatorSettings(judge_id="verify", gather_timeout_s=60, min_answers=2),
        metrics=JudgeMetrics(CollectorRegistry()),
    )


def _answer(inst: ev.Instruction, model: str, text: str) -> ev.Response:
    return ev.Response(
        response_id=f"{inst.instruction_id}-{model}",
        instruction=inst,
        model_id=model,
        sampling={},
        text=text,
        status="answered",
        finish_reason="stop",
    )


INST = ev.Instruction(
    instruction_id="inst-gather-1", prompt="What colour?", models=["a", "b", "c"], reference="red"
)


def test_waits_for_every_assigned_answer_then_rates_once(ctx):
    assert handle_response(_answer(INST, "a", "red"), ctx) == []
    assert handle_response(_answer(INST, "b", "blue"), ctx) == []
    [annotation] = handle_response(_answer(INST, "c", "Red."), ctx)
    ratings = {r.model_id: r.ratings[ev.Aspect.HELPFULNESS].rating for r in annotation.rated}
    assert ratings == {"a": 5, "b": 1, "c": 5} and annotation.missing_model_ids == []
    assert handle_response(_answer(INST, "c", "Red."), ctx) == [annotation], "a redelivery re-publishes"


def test_timeout_rates_what_arrived_and_records_the_missing_model(ctx):
    handle_response(_answer(INST, "a", "red"), ctx)
    handle_response(_answer(INST, "b", "green"), ctx)
    now = datetime.now(UTC)
    assert sweep(ctx, owns=lambda key: True, now=now) == [], "not before the timeout"
    assert sweep(ctx, owns=lambda key: False, now=now + timedelta(seconds=120)) == [], "another replica's key"
    [annotation] = sweep(ctx, owns=lambda key: True, now=now + timedelta(seconds=120))
    assert annotation.missing_model_ids == ["c"] and len(annotation.rated) == 2
    assert handle_response(_answer(INST, "c", "red"), ctx) == [], "a late answer is kept, not rated"
    assert len(ctx.ledger.responses_for(INST.instruction_id)) == 3
    assert sweep(ctx, owns=lambda key: True, now=now + timedelta(seconds=240)) == []


def test_without_a_usable_reference_nothing_is_guessed(ctx):
    inst = INST.model_copy(
        update={"instruction_id": "inst-gather-2", "reference": "Describe the scene in detail."}
    )
    for model in ("a", "b", "c"):
        assert handle_response(_answer(inst, model, "red"), ctx) == []
    assert ctx.ledger.annotations_for(inst.instruction_id) == []
