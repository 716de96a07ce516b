"""The Prometheus series every backend keeps, per model, on the registry its service serves.

One set of names whatever the backend (HTTP, transformers, vLLM), so a dashboard or an alert works
for any model: requests by final outcome, tokens in and out (tokens/s is their rate), latency of
successful requests, requests in flight, and failed attempts by kind (an HTTP backend retries, so it
can count several attempts for one request).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.backends.base import GenerationResult
from shared.backends.errors import ContextLengthError, PermanentBackendError, TransientBackendError

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def outcome_of(error: TransientBackendError | PermanentBackendError) -> str:
    """The ``outcome`` label of a request that failed for good."""
    if isinstance(error, ContextLengthError):
        return "context_length"
    return "transient" if isinstance(error, TransientBackendError) else "permanent"


class BackendMetrics:
    """The series of one model (``model``: the served name or path); a registry of its own when
    none is given (tests, the evaluator's jobs)."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.model = model
        self._requests = Counter(
            "vlf_backend_requests",
            "Generation requests by final outcome (ok, transient, permanent, context_length).",
            ["model", "outcome"],
            registry=registry,
        )
        tokens = Counter(
            "vlf_backend_tokens",
            "Tokens of successful requests; direction is in (prompt) or out (completion).",
            ["model", "direction"],
            registry=registry,
        )
        latency = Histogram(
            "vlf_backend_latency_seconds",
            "Latency of successful requests (for in-process backends, of their batch).",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        in_flight = Gauge(
            "vlf_backend_in_flight", "Requests now awaiting the model.", ["model"], registry=registry
        )
        self._errors = Counter(
            "vlf_backend_errors",
            "Failed attempts, retried or not, by kind.",
            ["model", "kind"],
            registry=registry,
        )
        # The series of every successful request, bound once (``labels()`` is a locked lookup).
        self._ok = self._requests.labels(model, "ok")
        self._tokens_in = tokens.labels(model, "in")
        self._tokens_out = tokens.labels(model, "out")
        self._latency = latency.labels(model)
        self.in_flight = in_flight.labels(model)

    def succeeded(self, result: GenerationResult) -> None:
        self._ok.inc()
        self._tokens_in.inc(result.prompt_tokens)
        self._tokens_out.inc(result.completion_tokens)
        self._latency.observe(result.latency_s)

    def failed(self, outcome: str, requests: int = 1) -> None:
        self._requests.labels(self.model, outcome).inc(requests)

    def attempt_failed(self, kind: str) -> None:
        self._errors.labels(self.model, kind).inc()


@contextmanager
def record_batch(metrics: BackendMetrics, requests: int, *, count_failures: bool = True) -> Iterator[None]:
    """An in-process backend's call: its requests are in flight meanwhile, and all of them fail
    together if it raises (a batch succeeds or fails as one). ``count_failures=False`` for a batch
    whose requests are tried again if it fails (``shared.backends.coalesce``): not a final outcome."""
    metrics.in_flight.inc(requests)
    try:
        yield
    except (TransientBackendError, PermanentBackendError) as error:
        if count_failures:
            metrics.failed(outcome_of(error), requests)
        raise
    finally:
        metrics.in_flight.dec(requests)
