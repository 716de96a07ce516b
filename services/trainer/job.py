"""One training job, in its own process: ``python -m services.trainer.job --job-id ID``.

Reads the request from the ledger, selects the pairs, runs DPO (resuming from the last checkpoint in
the job's folder), publishes progress and finally the checkpoint. Known failures (unknown model, no
pairs, out of memory) mark the job failed with the reason and exit 0, so they are not retried;
anything else exits non-zero and the trainer's supervisor starts the job again (it resumes).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Mapping

from services.trainer.settings import TrainerSettings
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts.ids import checkpoint_id
from shared.ledger import Ledger
from shared.logs import configure_logging
from shared.ml.training_pairs import pair_records, select_pairs
from shared.paths import PathEscapeError, within
from shared.runtime.admin import EventPublisher
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 2.0


class JobFailed(Exception):
    """A failure that retrying cannot fix; its message is published as the reason."""


def finite_metrics(values: Mapping[str, object]) -> dict[str, float]:
    """The numeric metrics that are finite. A diverged run's NaN or inf loss has no JSON form, and
    the contracts refuse it, so it is left out (and logged) rather than failing the checkpoint."""
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
    dropped = sorted(k for k, v in numbers.items() if not math.isfinite(v))
    if dropped:
        log.warning("non-finite metrics left out of the checkpoint: %s", dropped)
    return {k: v for k, v in numbers.items() if math.isfinite(v)}


def finite_or_none(values: Mapping[str, object]) -> dict[str, object]:
    """A progress update with NaN or inf (a diverged loss) reported as unknown (None)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def dpo_config(request: ev.TrainRequest, settings: TrainerSettings):  # noqa: ANN201 - imports torch lazily
    from services.trainer.dpo import DpoJobConfig

    return DpoJobConfig(
        base_model=request.base_model,
        use_lora=request.use_lora,
        lora=request.lora,
        merge_adapter=request.merge_adapter,
        hparams=request.hparams,
        precompute_ref_logps=request.precompute_ref_logps,
        save_steps=settings.save_steps,
        report_to=settings.report_to,
        run_name=request.job_id,
    )


def run_facts(request: ev.TrainRequest, pairs: list[ev.Pair]) -> dict[str, str | int | float]:
    """What the trackers show beside TRL's arguments: where the run's data came from."""
    selector = request.dataset
    return {
        "job_id": request.job_id,
        "base_model": request.base_model,
        "pairs": len(pairs),
        "instructions": len({pair.instruction_id for pair in pairs}),
        "judges": ", ".join(sorted({judge for pair in pairs for judge in pair.judge_ids})),
        "strategy": selector.strategy,
        "min_margin": selector.min_margin,
        "split": selector.split,
    }


def run_job(job_id: str, common: CommonSettings, settings: TrainerSettings) -> None:
    ledger = Ledger(common.ledger_url)
    job = ledger.job(job_id)
    if job is None:
        raise SystemExit(f"no training job {job_id!r} in the ledger")
    request = ev.TrainRequest.model_validate(job.request)
    # accelerate (the chart's Job) starts one process per GPU; only the first reports and records.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        ledger.update_job(job_id, status="running")
    with EventPublisher(common) as publisher:
        try:
            checkpoint = train(request, ledger, BlobStore(common.blob_url), publisher, settings)
        except JobFailed as exc:
            reason = str(exc)
            log.error("training job %s failed: %s", job_id, reason)
            if main_process:
                ledger.update_job(job_id, status="failed", error=reason)
                publisher.publish([ev.TrainProgress(job_id=job_id, status="failed", error=reason)])
            return
        if not main_process:
            return
        ledger.record(checkpoint)
        publisher.publish([checkpoint])
        row = ledger.job(job_id)
        final = final_progress(job_id, row.progress if row else None, int(checkpoint.metrics.get("steps", 0)))
        ledger.update_job(job_id, status="completed", progress=final.model_dump(mode="json"))
        publisher.publish([final])


def final_progress(job_id: str, last: dict | None, steps: int) -> ev.TrainProgress:
    """The completed job's progress keeps its last figures (total steps, loss, reward margin), so the
    report and ``vlf train --wait`` show how the run ended rather than zeros."""
    kept = ("total_steps", "epoch", "loss", "reward_margin", "reward_accuracy", "pairs_per_s")
    figures = {name: value for name, value in (last or {}).items() if name in kept}
    return ev.TrainProgress(job_id=job_id, status="completed", step=steps, eta_s=0.0, **figures)


def train(
    request: ev.TrainRequest,
    ledger: Ledger,
    blobs: BlobStore,
    publisher: EventPublisher,
    settings: TrainerSettings,
) -> ev.Checkpoint:
    pairs = select_pairs(ledger, request.dataset, created_before=request.requested_at)
    if not pairs:
        raise JobFailed(f"empty dataset: no pairs match {request.dataset.model_dump()}")
    check_model_exists(request.base_model)
    try:
        from services.trainer.dpo import train as dpo_train

        config = dpo_config(request, settings).model_copy(update={"run_facts": run_facts(request, pairs)})
    except ValueError as exc:
        raise JobFailed(f"invalid training configuration: {exc}") from exc
    last_sent = 0.0

    def on_progress(update) -> None:  # noqa: ANN001
        nonlocal last_sent
        progress = ev.TrainProgress(
            job_id=request.job_id, status="running", **finite_or_none(update.model_dump())
        )
        ledger.update_job(request.job_id, progress=progress.model_dump(mode="json"))
        if time.monotonic() - last_sent >= PROGRESS_EVERY_S or update.step == update.total_steps:
            publisher.publish([progress])
            last_sent = time.monotonic()

    try:
        output_dir = within(settings.checkpoint_dir, request.job_id)
    except PathEscapeError as exc:
        raise JobFailed(str(exc)) from exc
    try:
        outcome = dpo_train(pair_records(pairs, blobs), config, output_dir, on_progress)
    except OSError as exc:
        if (
            "does not appear to have" in str(exc)
            or "not a valid model identifier" in str(exc)
            or "Repo id" in str(exc)
        ):
            raise JobFailed(f"unknown model {request.base_model!r}: {exc}") from exc
        raise
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise JobFailed(
                f"out of memory: {exc}; lower per_device_train_batch_size or enable gradient checkpointing"
            ) from exc
        raise
    uri = outcome.artifact_dir.resolve().as_uri()
    metrics = finite_metrics(outcome.metrics)
    return ev.Checkpoint(
        checkpoint_id=checkpoint_id(request.job_id, uri),
        job_id=request.job_id,
        base_model=request.base_model,
        artifact_uri=uri,
        kind=outcome.kind,
        metrics={**metrics, "steps": float(outcome.steps), "pairs": float(len(pairs))},
    )


def check_model_exists(base_model: str) -> None:
    """Fail fast, with the reason, when the base model cannot be resolved (path or hub id)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JobFailed(f"unknown model {base_model!r}: {first_line}") from exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args()
    common = CommonSettings()
    configure_logging(common.log_level, json_logs=common.log_json)
    run_job(args.job_id, common, TrainerSettings())


if __name__ == "__main__":
    main()
