"""An eval job's known failures, run in-process against a real SQLite ledger (no model is loaded)."""

from pathlib import Path

from services.evaluator.handler import EvaluatorContext, handle_eval_request
from services.evaluator.job import JobContext, run_job
from services.evaluator.settings import EvaluatorSettings
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger


def test_known_failures_give_failed_results_with_reasons_and_a_failed_job(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    settings = EvaluatorSettings(
        mme_root=tmp_path / "no-mme",
        greedy_eval_path=tmp_path / "no-greedy.jsonl",
        job_log_dir=tmp_path / "jobs",
    )
    request = ev.EvalRequest(
        eval_id="eval-doomed",
        model=ev.ModelRef(name="tuned", base_model="org/never-loaded"),
        benchmarks=["mme", "greedy_accuracy", "preference_accuracy", "mmhal"],
        reference_model="org/never-loaded",
    )
    handle_eval_request(request, EvaluatorContext(ledger=ledger, settings=settings))
    published: list[ev.Event] = []
    ctx = JobContext(
        ledger=ledger,
        blobs=BlobStore(str(tmp_path / "blobs")),
        settings=settings,
        registry_path=tmp_path / "registry.yaml",
        publish=published.extend,
    )

    status = run_job("eval-doomed", ctx)

    errors = {
        r.benchmark: r.error for r in published if isinstance(r, ev.EvalResult) and r.status == "failed"
    }
    assert status == "failed"
    assert set(errors) == set(request.benchmarks)
    assert "BenchmarkFormatError" in errors["mme"] and "no-mme" in errors["mme"]
    assert "no-greedy.jsonl not found" in errors["greedy_accuracy"]
    assert errors["preference_accuracy"].startswith("NoHeldoutPairsError: no held-out pairs")
    assert "VLF_EVALUATOR_MMHAL_JUDGE_ID" in errors["mmhal"]
    job = ledger.job("eval-doomed")
    assert job.status == "failed" and "greedy_accuracy:" in job.error
    assert ledger.count(ev.EvalResult, eval_id="eval-doomed") == 4

    assert run_job("eval-doomed", ctx) == "failed" and len(published) == 4, "a finished job is not redone"
