"""Run one service: Kafka runtime in the main thread, its HTTP probes in a background thread."""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn
from pydantic_settings import BaseSettings

from shared.http.app import create_app
from shared.logs import configure_logging
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.settings import CommonSettings

log = logging.getLogger(__name__)


def settings_view(*all_settings: BaseSettings) -> dict:
    """Settings for /info; SecretStr fields dump as '**********'."""
    view: dict = {}
    for s in all_settings:
        view.update({k: str(v) if v is not None else None for k, v in s.model_dump().items()})
    return view


def serve(definition: ServiceDefinition, common: CommonSettings, *service_settings: BaseSettings) -> None:
    """Block until SIGTERM/SIGINT; exit non-zero (by raising) when a handler crashed."""
    configure_logging(common.log_level, json_logs=common.log_json)
    runtime = KafkaRuntime(definition, common)
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
    try:
        runtime.run()
    finally:
        server.should_exit = True
        http_thread.join(timeout=5)
