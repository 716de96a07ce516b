"""One eval job, in its own process: ``python -m services.evaluator.job --job-id ID``.

Started by the evaluator's ``JobSupervisor``. Every answer and judge reply goes to the ledger as
soon as its batch returns, and every finished benchmark's result is recorded, so a rerun after a
crash generates only what is missing and skips finished benchmarks. A failure that a rerun cannot
fix (missing benchmark files or checkpoint, no held-out pairs, a permanent backend error) gives a
failed result with the reason; anything else exits non-zero and the supervisor runs the job again.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.evaluator.errors import BenchmarkFormatError
from services.evaluator.greedy import load_greedy_items, run_greedy_accuracy
from services.evaluator.handler import endpoint_entry, local_path, require_local
from services.evaluator.ledger_cache import LedgerPredictionCache
from services.evaluator.mme import run_mme
from services.evaluator.mmhal import load_judge_template, load_mmhal, run_mmhal
from services.evaluator.mmvet import (
    DEFAULT_GRADER_PROMPT,
    GRADER_MAX_TOKENS,
    load_grader_prompt,
    load_mmvet,
    run_mmvet,
)
from services.evaluator.settings import EvaluatorSettings
from shared.backends.base import Backend, ChatMessage, GenerationRequest
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts.events import SamplingParams
from shared.contracts.ids import eval_result_id, stable_hash
from shared.errors import PermanentError
from shared.ledger import Ledger
from shared.logs import configure_logging
from shared.paths import within
from shared.registry import Registry
from shared.runtime.admin import EventPublisher
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

Metrics = tuple[dict[str, float], dict]


class NoHeldoutPairsError(PermanentError):
    """The ledger has no held-out pairs of the configured strategy to measure preference accuracy on."""


class EvalConfigError(PermanentError):
    """The evaluator's settings lack something a requested benchmark needs (e.g. MMHal's judge)."""


class UnsupportedModelError(PermanentError):
    """The benchmark needs something this model reference cannot give (e.g. log-probs of an endpoint)."""


@dataclass(frozen=True)
class JobContext:
    ledger: Ledger
    blobs: BlobStore
    settings: EvaluatorSettings
    registry_path: Path
    publish: Callable[[list[ev.Event]], None]


def answer_params(settings: EvaluatorSettings) -> SamplingParams:
    """Greedy, so an evaluation is reproducible and its cached answers stay valid."""
    return SamplingParams(temperature=0.0, max_tokens=settings.max_new_tokens)


def model_key(model: ev.ModelRef, params: SamplingParams) -> str:
    """Cache key of a model's answers: its weights (or endpoint) and decoding, never its report label."""
    return stable_hash(
        "eval-answers",
        model.base_model,
        model.adapter_uri,
        model.endpoint_id,
        model.checkpoint_id,
        params.model_dump(mode="json"),
    )


def build_answer_backend(
    model: ev.ModelRef, settings: EvaluatorSettings, registry_path: Path | None
) -> Backend:
    """The evaluated model: the registry's entry for an endpoint id (its URL and key, never the
    event's), else the local weights."""
    if model.endpoint_id is not None:
        from shared.backends.build import build_backend

        return build_backend(endpoint_entry(registry_path, model.endpoint_id))
    from shared.backends.transformers_local import TransformersBackend

    adapter = str(local_path(model.adapter_uri)) if model.adapter_uri else None
    return TransformersBackend(
        str(local_path(model.base_model)), adapter_path=adapter, max_batch_size=settings.batch_size
    )


class Answerer:
    """The evaluated model as ``[(image, prompt)] -> [answer]``, loaded on first use, so a run whose
    answers are all cached never loads the model."""

    def __init__(self, model: ev.ModelRef, settings: EvaluatorSettings, registry_path: Path | None) -> None:
        self._model = model
        self._settings = settings
        self._registry_path = registry_path
        self._params = answer_params(settings)
        self._backend: Backend | None = None

    def __call__(self, batch: list[tuple[bytes, str]]) -> list[str]:
        if self._backend is None:
            self._backend = build_answer_backend(self._model, self._settings, self._registry_path)
        requests = [
            GenerationRequest(
                messages=[ChatMessage(role="user", text=prompt)], images=[image], params=self._params
            )
            for image, prompt in batch
        ]
        return [result.text for result in self._backend.generate(requests)]

    def close(self) -> None:
        """Free the model (before preference accuracy loads its own copies)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None


def text_judge(
    backend: Backend, max_tokens: int, temperature: float = 0.0
) -> Callable[[list[str]], list[str]]:
    """A registry judge as ``[prompt] -> [reply]``, at temperature 0 as MMHal-Bench's GPT-4 judge."""
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens)

    def judge(prompts: list[str]) -> list[str]:
        requests = [
            GenerationRequest(messages=[ChatMessage(role="user", text=p)], params=params) for p in prompts
        ]
        return [result.text for result in backend.generate(requests)]

    return judge


def run_mme_benchmark(request: ev.EvalRequest, answerer: Answerer, ctx: JobContext) -> Metrics:
    settings = ctx.settings
    results_dir = within(settings.job_log_dir, request.eval_id, "mme_results")
    scores = run_mme(
        settings.mme_root,
        answerer,
        model_key=model_key(request.model, answer_params(settings)),
        batch_size=settings.batch_size,
        cache=LedgerPredictionCache(ctx.ledger),
        subtasks=settings.mme_subtasks,
        results_dir=results_dir,
    )
    metrics = {"perception": scores.perception, "cognition": scores.cognition, "total": scores.total}
    metrics |= {name: subtask.score for name, subtask in scores.per_subtask.items()}
    details = {
        "per_subtask": {name: subtask.model_dump() for name, subtask in scores.per_subtask.items()},
        "official_results_dir": str(results_dir),
    }
    return metrics, details


def run_mmhal_benchmark(request: ev.EvalRequest, answerer: Answerer, ctx: JobContext) -> Metrics:
    from shared.backends.build import build_backend

    settings = ctx.settings
    if settings.mmhal_judge_id is None:
        raise EvalConfigError("mmhal needs a text-only judge: set VLF_EVALUATOR_MMHAL_JUDGE_ID")
    if not settings.mmhal_path.is_file():
        raise BenchmarkFormatError(f"MMHal-Bench file {settings.mmhal_path} not found")
    items = load_mmhal(settings.mmhal_path, settings.mmhal_images)
    judge_entry = Registry.load(ctx.registry_path).judge(settings.mmhal_judge_id)
    template = load_judge_template(settings.mmhal_judge_template) if settings.mmhal_judge_template else None
    response_path = within(settings.job_log_dir, request.eval_id, "mmhal_responses.json")
    judge_backend = build_backend(judge_entry)
    try:
        scores = run_mmhal(
            items,
            answerer,
            text_judge(judge_backend, judge_entry.max_tokens),
            model_key=model_key(request.model, answer_params(settings)),
            judge_key=f"{judge_entry.id}:{judge_entry.model}",
            cache=LedgerPredictionCache(ctx.ledger),
            batch_size=settings.batch_size,
            template=template,
            response_path=response_path,
        )
    finally:
        judge_backend.close()
    metrics = {
        "average": scores.average,
        "hallucination_rate": scores.hallucination_rate,
        "n": float(scores.n),
    }
    metrics |= dict(scores.per_type)
    return metrics, {"judge_id": judge_entry.id, "official_responses": str(response_path)}


def run_mmvet_benchmark(request: ev.EvalRequest, answerer: Answerer, ctx: JobContext) -> Metrics:
    from shared.backends.build import build_backend

    settings = ctx.settings
    if settings.mmvet_judge_id is None:
        raise EvalConfigError("mmvet needs a text-only grader: set VLF_EVALUATOR_MMVET_JUDGE_ID")
    items = load_mmvet(settings.mmvet_root)
    judge_entry = Registry.load(ctx.registry_path).judge(settings.mmvet_judge_id)
    prompt = (
        load_grader_prompt(settings.mmvet_grader_prompt)
        if settings.mmvet_grader_prompt
        else DEFAULT_GRADER_PROMPT
    )
    response_path = within(settings.job_log_dir, request.eval_id, "mmvet_results.json")
    judge_backend = build_backend(judge_entry)
    try:
        scores = run_mmvet(
            items,
            answerer,
            lambda prompts, temperature: text_judge(judge_backend, GRADER_MAX_TOKENS, temperature)(prompts),
            model_key=model_key(request.model, answer_params(settings)),
            judge_key=f"{judge_entry.id}:{judge_entry.model}",
            cache=LedgerPredictionCache(ctx.ledger),
            batch_size=settings.batch_size,
            prompt=prompt,
            runs=settings.mmvet_runs,
            response_path=response_path,
        )
    finally:
        judge_backend.close()
    metrics = {"total": scores.total, "std": scores.std, "n": float(scores.n)} | dict(scores.per_capability)
    details = {
        "per_integration": scores.per_integration,
        "run_totals": scores.run_totals,
        "judge_id": judge_entry.id,
        "official_results": str(response_path),
    }
    return metrics, details


def run_preference_accuracy(request: ev.EvalRequest, answerer: Answerer, ctx: JobContext) -> Metrics:
    from shared.ml.implicit_reward import preference_accuracy
    from shared.ml.training_pairs import pair_records, select_pairs

    model = request.model
    if model.endpoint_id is not None:
        raise UnsupportedModelError("preference_accuracy needs local weights (log-probs), not an endpoint")
    reference = request.reference_model or (model.base_model if model.adapter_uri else None)
    if reference is None:
        raise UnsupportedModelError("preference_accuracy needs a reference_model for a model without adapter")
    adapter = str(local_path(model.adapter_uri)) if model.adapter_uri else None
    selector = ev.DatasetSelector(split="heldout", strategy=ctx.settings.heldout_strategy)
    pairs = select_pairs(ctx.ledger, selector)
    if not pairs:
        raise NoHeldoutPairsError(f"no held-out pairs of strategy {selector.strategy!r} in the ledger")
    answerer.close()
    accuracy = preference_accuracy(
        local_path(model.base_model),
        adapter,
        local_path(reference),
        pair_records(pairs, ctx.blobs),
        ctx.settings.beta,
        batch_size=ctx.settings.batch_size,
    )
    details = {"reference_model": reference, "strategy": selector.strategy, "beta": ctx.settings.beta}
    return {"accuracy": accuracy, "n": float(len(pairs))}, details


def run_greedy_benchmark(request: ev.EvalRequest, answerer: Answerer, ctx: JobContext) -> Metrics:
    settings = ctx.settings
    scores = run_greedy_accuracy(
        load_greedy_items(settings.greedy_eval_path),
        answerer,
        model_key=model_key(request.model, answer_params(settings)),
        batch_size=settings.batch_size,
        cache=LedgerPredictionCache(ctx.ledger),
    )
    metrics = {"accuracy": scores.accuracy, "n": float(scores.n)}
    return metrics, {"per_kind": scores.per_kind, "path": str(settings.greedy_eval_path)}


BENCHMARK_RUNNERS: dict[str, Callable[[ev.EvalRequest, Answerer, JobContext], Metrics]] = {
    "mme": run_mme_benchmark,
    "mmhal": run_mmhal_benchmark,
    "mmvet": run_mmvet_benchmark,
    "preference_accuracy": run_preference_accuracy,
    "greedy_accuracy": run_greedy_benchmark,
}


def benchmark_result(
    request: ev.EvalRequest, benchmark: str, answerer: Answerer, ctx: JobContext
) -> ev.EvalResult:
    """The benchmark's result, or a failed result for a failure no rerun can fix."""
    common = dict(
        result_id=eval_result_id(request.eval_id, benchmark),
        eval_id=request.eval_id,
        model=request.model,
        benchmark=benchmark,
    )
    runner = BENCHMARK_RUNNERS.get(benchmark)
    if runner is None:
        return ev.EvalResult(
            **common, status="failed", error=f"eval request for a missing benchmark: {benchmark}"
        )
    try:
        if request.model.adapter_uri is not None:  # checked on receipt, but it may have been deleted since
            require_local(request.model.adapter_uri, "adapter_uri")
        metrics, details = runner(request, answerer, ctx)
    except PermanentError as error:
        log.warning("eval %s: %s failed: %s", request.eval_id, benchmark, error)
        return ev.EvalResult(**common, status="failed", error=f"{type(error).__name__}: {error}")
    return ev.EvalResult(**common, status="completed", metrics=metrics, details=details)


def run_job(job_id: str, ctx: JobContext) -> str:
    """Run every benchmark still without a result, publish and record each; returns the job status."""
    row = ctx.ledger.job(job_id)
    if row is None:
        raise KeyError(f"no eval job {job_id!r} in the ledger")
    if row.status in ("completed", "failed"):
        return row.status
    request = ev.EvalRequest.model_validate(row.request)
    ctx.ledger.update_job(job_id, status="running")
    done = {r.benchmark: r for r in ctx.ledger.iter_facts(ev.EvalResult, eval_id=request.eval_id)}
    answerer = Answerer(request.model, ctx.settings, ctx.registry_path)
    try:
        for benchmark in request.benchmarks:
            if benchmark in done:
                continue
            result = benchmark_result(request, benchmark, answerer, ctx)
            ctx.publish([result])  # then recorded: a crash in between republishes the same result id
            ctx.ledger.record(result)
            done[benchmark] = result
    finally:
        answerer.close()
    failures = [f"{r.benchmark}: {r.error}" for r in done.values() if r.status == "failed"]
    progress = {"benchmarks": {name: r.status for name, r in done.items()}}
    status = "failed" if failures else "completed"
    ctx.ledger.update_job(job_id, status=status, progress=progress, error="; ".join(failures) or None)
    return status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one evaluation job recorded in the ledger.")
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args(argv)
    common = CommonSettings()
    settings = EvaluatorSettings()
    configure_logging(common.log_level, json_logs=common.log_json)
    ledger = Ledger(common.ledger_url)
    ledger.migrate()
    try:
        with EventPublisher(common) as publisher:
            ctx = JobContext(
                ledger=ledger,
                blobs=BlobStore(common.blob_url),
                settings=settings,
                registry_path=common.registry_path,
                publish=publisher.publish,
            )
            status = run_job(args.job_id, ctx)
        log.info("eval job %s %s", args.job_id, status)
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
