"""Run one service: Kafka runtime in the main thread, its HTTP probes in a background thread."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable, Sequence

import uvicorn
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from shared.http.app import create_app
from shared.logs import configure_logging
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.settings import CommonSettings, mask_url_password

log = logging.getLogger(__name__)


def settings_view(*all_settings: BaseSettings) -> dict:
    """Settings for /info: SecretStr fields dump as '**********' and a URL's password as '***' (the
    ledger URL is a plain string that holds the database password in a cluster)."""
    view: dict = {}
    for s in all_settings:
        view.update(
            {k: mask_url_password(str(v)) if v is not None else None for k, v in s.model_dump().items()}
        )
    return view


# A collection starts after this many new container objects (CPython's default is 700).
GC_GEN0_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Move everything built at start-up (modules, schemas, ORM metadata, clients: most of the heap)
    out of the cyclic collector's sight, and collect less often. With CPython's defaults the sampler
    spent 8% of its CPU in 521 collections during a 6,400-answer run of ``bench_sampler`` (each
    full one scanned that whole heap); with this, 5 collections took 0.05 s. Reference counting
    still frees almost everything at once; only cyclic garbage waits for the next collection."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def run_background(
    background: Callable[[KafkaRuntime, threading.Event], None],
    runtime: KafkaRuntime,
    stopped: threading.Event,
) -> None:
    """Run a service's background task; if it raises while the service runs, the service stops with
    that error instead of going on without it (a daemon thread's error is otherwise only printed)."""
    try:
        background(runtime, stopped)
    except Exception as error:
        if stopped.is_set() or runtime.stopping:
            log.info("background task ended while stopping: %r", error)
        else:
            runtime.crash(error)


def serve(
    definition: ServiceDefinition,
    common: CommonSettings,
    *service_settings: BaseSettings,
    registry: CollectorRegistry | None = None,
    background: Sequence[Callable[[KafkaRuntime, threading.Event], None]] = (),
) -> None:
    """Block until SIGTERM/SIGINT; exit non-zero (by raising) when a handler crashed.

    ``registry`` lets handlers put their own metrics on /metrics; each of ``background(runtime,
    stopped)`` runs in a daemon thread of its own (timers such as the annotator's gather timeout)
    until ``stopped`` is set.
    """
    configure_logging(common.log_level, json_logs=common.log_json)
    runtime = KafkaRuntime(definition, common, registry)
    tune_garbage_collector()
    app = create_app(runtime, settings_view=settings_view(common, *service_settings), title=definition.name)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=common.http_host, port=common.http_port, log_level="warning", access_log=False
        )
    )
    http_thread = threading.Thread(target=server.run, name="http", daemon=True)
    http_thread.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runtime.stop())
    stopped = threading.Event()
    workers = [
        threading.Thread(
            target=run_background, args=(task, runtime, stopped), name=f"background-{i}", daemon=True
        )
        for i, task in enumerate(background)
    ]
    for worker in workers:
        worker.start()
    try:
        runtime.run()
    finally:
        stopped.set()
        for worker in workers:
            worker.join(timeout=90)  # e.g. the job supervisor stopping its job processes
        server.should_exit = True
        http_thread.join(timeout=5)
