"""Checkpoints and eval requests -> queued eval jobs in the ledger. Pure logic over the ledger.

Evaluation takes hours, so a handler only records the job (insert-or-ignore on a deterministic id)
and returns no events: the job process (``services.evaluator.job``) publishes the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from services.evaluator.settings import KNOWN_BENCHMARKS, EvaluatorSettings
from shared.contracts import events as ev
from shared.contracts.ids import eval_result_id, stable_hash
from shared.errors import PermanentError
from shared.ledger import Ledger
from shared.registry import ModelEntry, Registry

EVAL_JOB_KIND = "eval"
FILE_SCHEME = "file://"
# DPO's implicit reward of the reference model measured against itself is zero for every answer,
# so a base model's "preference accuracy" would be a constant 0, not a measurement.
POLICY_ONLY_BENCHMARKS = frozenset({"preference_accuracy"})


class UnknownBenchmarkError(PermanentError):
    """An eval request names a benchmark this service does not run."""


class MissingCheckpointError(PermanentError):
    """A checkpoint or adapter is not on this machine's disk; waiting will not bring it."""


class UnknownEndpointError(PermanentError):
    """An eval request names a model id the operator's registry does not have."""


@dataclass(frozen=True)
class EvaluatorContext:
    ledger: Ledger
    settings: EvaluatorSettings
    registry_path: Path | None = None  # None: no registry, so a request for an endpoint is refused


def endpoint_entry(registry_path: Path | None, endpoint_id: str) -> ModelEntry:
    """The registry model that answers for ``endpoint_id``. Its URL and API key are the operator's:
    an event only picks among the endpoints configured, so it cannot send the key anywhere else."""
    if registry_path is None or not registry_path.is_file():
        raise UnknownEndpointError(
            f"eval request for endpoint {endpoint_id!r}, but this evaluator has no registry "
            f"(looked for {registry_path}; set VLF_REGISTRY_PATH)"
        )
    try:
        return Registry.load(registry_path).model(endpoint_id)
    except KeyError as exc:
        raise UnknownEndpointError(f"eval request for an unknown endpoint: {exc.args[0]}") from None


def local_path(uri: str) -> Path:
    """A ``file://`` URI (percent-encoded, as the trainer's ``Path.as_uri()`` writes it) or a plain
    path as a local path."""
    if uri.startswith(FILE_SCHEME):
        return Path(unquote(urlsplit(uri).path))
    return Path(uri)


def require_local(uri: str, what: str) -> Path:
    path = local_path(uri)
    if not path.exists():
        raise MissingCheckpointError(f"checkpoint URI does not exist: {what} {uri!r} (looked for {path})")
    return path


def eval_id(model: ev.ModelRef, benchmarks: list[str]) -> str:
    """Same model and benchmarks, same id: a redelivered checkpoint queues nothing new."""
    return stable_hash("eval", model.model_dump(mode="json"), sorted(benchmarks))


def tuned_model(checkpoint: ev.Checkpoint) -> ev.ModelRef:
    """An adapter runs on the checkpoint's base model; merged and full checkpoints are the model."""
    artifact = str(require_local(checkpoint.artifact_uri, "artifact_uri"))
    if checkpoint.kind == "adapter":
        return ev.ModelRef(
            name="tuned",
            base_model=checkpoint.base_model,
            adapter_uri=artifact,
            checkpoint_id=checkpoint.checkpoint_id,
        )
    return ev.ModelRef(name="tuned", base_model=artifact, checkpoint_id=checkpoint.checkpoint_id)


def checkpoint_requests(checkpoint: ev.Checkpoint, benchmarks: list[str]) -> list[ev.EvalRequest]:
    """The tuned model on every benchmark; its base model on those that mean something for it."""
    tuned = tuned_model(checkpoint)
    base = ev.ModelRef(name="base", base_model=checkpoint.base_model)
    base_benchmarks = [b for b in benchmarks if b not in POLICY_ONLY_BENCHMARKS]
    requests = [
        ev.EvalRequest(
            eval_id=eval_id(tuned, benchmarks),
            model=tuned,
            benchmarks=benchmarks,
            reference_model=checkpoint.base_model,
        )
    ]
    if base_benchmarks:
        requests.append(
            ev.EvalRequest(eval_id=eval_id(base, base_benchmarks), model=base, benchmarks=base_benchmarks)
        )
    return requests


def check_request(request: ev.EvalRequest, registry_path: Path | None = None) -> None:
    """Refuse, with the reason, a request that no run could serve, before it is queued."""
    unknown = sorted(set(request.benchmarks) - set(KNOWN_BENCHMARKS))
    if unknown:
        raise UnknownBenchmarkError(
            f"eval request for a missing benchmark: {unknown} (known: {list(KNOWN_BENCHMARKS)})"
        )
    if request.model.adapter_uri is not None:
        require_local(request.model.adapter_uri, "adapter_uri")
    if request.model.endpoint_id is not None:
        endpoint_entry(registry_path, request.model.endpoint_id)


def queue_job(ledger: Ledger, request: ev.EvalRequest) -> bool:
    """Record the job as queued unless its id is known; True when it is new."""
    return ledger.create_job(request.eval_id, EVAL_JOB_KIND, request.model_dump(mode="json"))


def handle_checkpoint(event: ev.Checkpoint, ctx: EvaluatorContext) -> list[ev.Event]:
    for request in checkpoint_requests(event, list(ctx.settings.auto_benchmarks)):
        queue_job(ctx.ledger, request)
    return []


def handle_eval_request(event: ev.EvalRequest, ctx: EvaluatorContext) -> list[ev.Event]:
    check_request(event, ctx.registry_path)
    queue_job(ctx.ledger, event)
    return []


def failed_results(ledger: Ledger, job_id: str, reason: str) -> list[ev.EvalResult]:
    """A failed result for each benchmark of a job that has no result yet (the job gave up)."""
    row = ledger.job(job_id)
    if row is None:
        raise KeyError(f"no eval job {job_id!r}")
    request = ev.EvalRequest.model_validate(row.request)
    done = {result.benchmark for result in ledger.iter_facts(ev.EvalResult, eval_id=request.eval_id)}
    return [
        ev.EvalResult(
            result_id=eval_result_id(request.eval_id, benchmark),
            eval_id=request.eval_id,
            model=request.model,
            benchmark=benchmark,
            status="failed",
            error=reason,
        )
        for benchmark in request.benchmarks
        if benchmark not in done
    ]
