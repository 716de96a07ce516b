"""The evaluator's handlers against a real SQLite ledger: which jobs a checkpoint or request queues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.evaluator.handler import (
    EvaluatorContext,
    MissingCheckpointError,
    UnknownBenchmarkError,
    failed_results,
    handle_checkpoint,
    handle_eval_request,
)
from services.evaluator.settings import EvaluatorSettings
from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import decode
from shared.contracts.ids import eval_result_id
from shared.errors import ContractError, PermanentError
from shared.ledger import Ledger


@pytest.fixture
def ctx(tmp_path: Path) -> EvaluatorContext:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    return EvaluatorContext(
        ledger=ledger, settings=EvaluatorSettings(auto_benchmarks=["mme", "preference_accuracy"])
    )


def checkpoint(artifact: Path | str, kind: str = "adapter", job_id: str = "job-1") -> ev.Checkpoint:
    return ev.Checkpoint(
        checkpoint_id=f"ckpt-{job_id}",
        job_id=job_id,
        base_model="org/base-vlm",
        artifact_uri=str(artifact),
        kind=kind,
    )


def requests_by_name(ledger: Ledger) -> dict[str, ev.EvalRequest]:
    requests = [ev.EvalRequest.model_validate(job.request) for job in ledger.jobs(kind="eval")]
    return {request.model.name: request for request in requests}


def test_an_adapter_checkpoint_queues_the_tuned_model_on_its_base_and_the_base_model(ctx, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()

    assert handle_checkpoint(checkpoint(adapter), ctx) == []

    jobs = ctx.ledger.jobs(kind="eval")
    assert [job.status for job in jobs] == ["queued", "queued"]
    by_name = requests_by_name(ctx.ledger)
    tuned, base = by_name["tuned"], by_name["base"]
    assert tuned.model == ev.ModelRef(
        name="tuned", base_model="org/base-vlm", adapter_uri=str(adapter), checkpoint_id="ckpt-job-1"
    )
    assert tuned.benchmarks == ["mme", "preference_accuracy"]
    assert tuned.reference_model == "org/base-vlm"
    assert base.model == ev.ModelRef(name="base", base_model="org/base-vlm")
    assert base.benchmarks == ["mme"], "the base model's implicit reward against itself is always 0"
    assert {job.id for job in jobs} == {tuned.eval_id, base.eval_id}


@pytest.mark.parametrize("kind", ["merged", "full"])
def test_a_whole_model_checkpoint_given_as_file_uri_is_the_model_itself(kind, ctx, tmp_path):
    merged = tmp_path / "my runs" / "jöb-1"  # percent-encoded in the URI, as the trainer writes it
    merged.mkdir(parents=True)

    handle_checkpoint(checkpoint(merged.as_uri(), kind=kind), ctx)

    tuned = requests_by_name(ctx.ledger)["tuned"]
    assert tuned.model.base_model == str(merged)
    assert tuned.model.adapter_uri is None
    assert tuned.reference_model == "org/base-vlm"


def test_redelivery_queues_nothing_new_and_the_base_model_is_evaluated_once(ctx, tmp_path):
    first, second = tmp_path / "a1", tmp_path / "a2"
    first.mkdir()
    second.mkdir()

    handle_checkpoint(checkpoint(first, job_id="job-1"), ctx)
    handle_checkpoint(checkpoint(first, job_id="job-1"), ctx)
    handle_checkpoint(checkpoint(second, job_id="job-2"), ctx)

    names = sorted(
        ev.EvalRequest.model_validate(job.request).model.name for job in ctx.ledger.jobs(kind="eval")
    )
    assert names == ["base", "tuned", "tuned"]


def test_a_checkpoint_missing_on_disk_is_a_permanent_error_and_queues_nothing(ctx, tmp_path):
    with pytest.raises(MissingCheckpointError, match="checkpoint URI does not exist") as raised:
        handle_checkpoint(checkpoint(f"file://{tmp_path / 'gone'}"), ctx)

    assert isinstance(raised.value, PermanentError)
    assert ctx.ledger.jobs(kind="eval") == []


def test_an_eval_request_is_queued_as_given(ctx, tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "id": "served",
                        "backend": "openai",
                        "model": "test-model",
                        "base_url": "http://127.0.0.1:9/v1",
                    }
                ]
            }
        )
    )
    ctx = EvaluatorContext(ledger=ctx.ledger, settings=ctx.settings, registry_path=registry)
    request = ev.EvalRequest(
        eval_id="eval-greedy-1",
        model=ev.ModelRef(name="served", base_model="test-model", endpoint_id="served"),
        benchmarks=["greedy_accuracy", "mmhal"],
    )

    assert handle_eval_request(request, ctx) == []

    job = ctx.ledger.job("eval-greedy-1")
    assert job is not None and job.status == "queued" and job.kind == "eval"
    assert ev.EvalRequest.model_validate(job.request) == request


def test_an_eval_request_for_an_unknown_benchmark_is_refused_with_the_name(ctx):
    request = ev.EvalRequest(
        eval_id="eval-bad", model=ev.ModelRef(name="m", base_model="org/m"), benchmarks=["mme", "vqav2"]
    )

    with pytest.raises(UnknownBenchmarkError, match=r"eval request for a missing benchmark: \['vqav2'\]"):
        handle_eval_request(request, ctx)

    assert ctx.ledger.job("eval-bad") is None


def test_an_eval_request_with_a_missing_adapter_is_refused(ctx, tmp_path):
    request = ev.EvalRequest(
        eval_id="eval-adapter",
        model=ev.ModelRef(name="m", base_model="org/m", adapter_uri=str(tmp_path / "nope")),
        benchmarks=["mme"],
    )

    with pytest.raises(MissingCheckpointError, match="checkpoint URI does not exist"):
        handle_eval_request(request, ctx)


def test_failed_results_cover_only_the_benchmarks_without_a_result(ctx):
    model = ev.ModelRef(name="m", base_model="org/m")
    request = ev.EvalRequest(eval_id="eval-partial", model=model, benchmarks=["mme", "greedy_accuracy"])
    handle_eval_request(request, ctx)
    ctx.ledger.record(
        ev.EvalResult(
            result_id=eval_result_id("eval-partial", "mme"),
            eval_id="eval-partial",
            model=model,
            benchmark="mme",
            status="completed",
            metrics={"total": 100.0},
        )
    )

    results = failed_results(ctx.ledger, "eval-partial", "gave up after 2 attempts")

    assert [(r.benchmark, r.status, r.error) for r in results] == [
        ("greedy_accuracy", "failed", "gave up after 2 attempts")
    ]
    assert results[0].result_id == eval_result_id("eval-partial", "greedy_accuracy")


def test_settings_refuse_unknown_mme_subtasks():
    with pytest.raises(ValueError, match="mme_subtasks"):
        EvaluatorSettings(mme_subtasks=["color", "colour"])


def test_a_checkpoint_without_a_base_model_is_refused_by_the_contract(tmp_path):
    """It used to pass decoding, then fail in the handler with an error that stopped the service."""
    payload = checkpoint(tmp_path, kind="full").model_dump(mode="json") | {"base_model": ""}

    with pytest.raises(ContractError, match="base_model"):
        decode(topics.CHECKPOINTS, json.dumps(payload).encode())
