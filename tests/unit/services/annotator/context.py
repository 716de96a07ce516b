"""An annotator's context for a handler's test: a real SQLite ledger and blob folder under
``tmp_path``, a registry of ``models`` and the one ``judge``, and the test's judge backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.annotator.handler import AnnotatorContext
from services.annotator.metrics import JudgeMetrics
from services.annotator.settings import AnnotatorSettings
from shared.backends.base import Backend
from shared.blobs.store import BlobStore
from shared.ledger import Ledger
from shared.registry import Registry


def annotator_context(
    tmp_path: Path,
    judge: dict,
    backend: Backend | None = None,
    models: Sequence[str] = ("a", "b", "c"),
    **settings: object,
) -> AnnotatorContext:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    entries = [{"id": m, "backend": "transformers", "model": "/m"} for m in models]
    registry = Registry.model_validate({"models": entries, "judges": [judge]})
    return AnnotatorContext(
        judge=registry.judge(judge["id"]),
        registry=registry,
        backend=backend,
        ledger=ledger,
        blobs=BlobStore(str(tmp_path / "blobs")),
        settings=AnnotatorSettings(judge_id=judge["id"], **settings),
        metrics=JudgeMetrics(CollectorRegistry()),
    )
