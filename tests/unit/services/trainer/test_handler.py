"""The trainer's request handler on a real SQLite ledger: a request is queued once, whatever the
broker redelivers, and a request that can never run is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.handler import InvalidTrainRequest, TrainerContext, handle_train_request
from shared.contracts import events as ev
from shared.ledger import Ledger


@pytest.fixture
def ctx(tmp_path: Path) -> TrainerContext:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    return TrainerContext(ledger=ledger)


def _request(**fields: object) -> ev.TrainRequest:
    return ev.TrainRequest(**{"job_id": "train-1", "base_model": "Qwen/Qwen-VL-Chat", **fields})


def test_a_request_is_queued_once_and_announced_once(ctx: TrainerContext) -> None:
    request = _request()

    [announced] = handle_train_request(request, ctx)

    assert (announced.job_id, announced.status) == ("train-1", "queued")
    job = ctx.ledger.job("train-1")
    assert (job.kind, job.status, job.attempts) == ("train", "queued", 0)
    assert ev.TrainRequest.model_validate(job.request) == request


def test_a_redelivered_request_queues_nothing_and_leaves_a_running_job_alone(ctx: TrainerContext) -> None:
    handle_train_request(_request(), ctx)
    ctx.ledger.update_job("train-1", status="running", attempts=1)

    again = handle_train_request(_request(), ctx)

    assert again == []
    job = ctx.ledger.job("train-1")
    assert (job.status, job.attempts) == ("running", 1)
    assert len(ctx.ledger.jobs(kind="train")) == 1


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"merge_adapter": True, "use_lora": False}, "merge_adapter=true needs use_lora=true"),
        ({"base_model": "/no/such/model"}, "base model path '/no/such/model' does not exist"),
        (
            {"hparams": ev.TrainHyperparams(loss_type=["sigmoid", "sft"], loss_weights=[1.0])},
            "needs one weight per loss_type entry",
        ),
    ],
)
def test_a_request_that_can_never_run_is_refused_with_its_reason_and_not_queued(
    ctx: TrainerContext, fields: dict, reason: str
) -> None:
    with pytest.raises(InvalidTrainRequest, match=reason.replace("[", r"\[")):
        handle_train_request(_request(**fields), ctx)
    assert ctx.ledger.jobs(kind="train") == []
