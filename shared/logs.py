"""Logging set-up: plain text locally, JSON lines in clusters; contextvars carry the instruction id."""

from __future__ import annotations

import logging

import structlog


def configure_logging(level: str = "INFO", *, json_logs: bool = False) -> None:
    """Route stdlib logging through structlog so every line has the same shape and bound context."""
    renderer = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared_processors = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.stdlib.ExtraAdder(),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request INFO lines of the clients (one per model call) cost CPU and bury the useful lines;
    # their failures reach our own logs through the retrying callers.
    for noisy in ("kafka", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
