"""The prediction cache in the ledger, so a job resumes on any replica, not only where it crashed."""

from __future__ import annotations

from shared.ledger import Ledger


class LedgerPredictionCache:
    """``PredictionCache`` over the ledger's predictions table (insert-or-ignore per item)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def get(self, model_key: str, benchmark: str, item_id: str) -> str | None:
        return self._ledger.prediction(model_key, benchmark, item_id)

    def put(self, model_key: str, benchmark: str, item_id: str, prediction: str) -> None:
        self._ledger.save_prediction(model_key, benchmark, item_id, prediction)
